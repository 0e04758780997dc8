"""The ``Interpreter`` drop-in runs the authors' README example and solves it exactly.

The README's Φ(x) = W @ x is linear, so σ has a closed form (method.md): with
c̄ = mean_j 1/σ_S,j² and n words, σ_i* = min(scale, sqrt(rate / (2 n c̄)) / |W_i|). Without
a σ_S the reference code divides the squared error by mean(Φ(x)²) instead, i.e.
σ_S² = mean(Φ(x)²) for every element, so c̄ = 1 / mean(Φ(x)²).

Tolerance: 2 % on every σ, the project's accuracy target for the default estimator
(method.md); float32 round-off is negligible against it.
"""

from __future__ import annotations

import ast
import builtins
import math
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, missing_resource, shared_data_dir
from contract import EXACT, ROUND_OFF, SE_FACTOR, one_thread

from captum_perturb import REFERENCE, Interpreter, calculate_regularization
from captum_perturb.functional import estimate_sigma

matplotlib.use("Agg")

RTOL = 0.02
README_W = torch.tensor([10.0, 20.0, 5.0, -20.0, -10.0])

# the README's Phi reads a global `device`; its x is created on the CPU
device = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tiny problems run single-threaded: on a loaded 2-core machine a two-thread
    parallel region waits for a busy core (Adam's ``log_sigmoid`` of 5 values measured
    20 ms a call on two threads against 1.5 µs on one)."""
    with one_thread():
        yield


def readme_phi(x: torch.Tensor) -> torch.Tensor:
    """The README's ``Phi``, for the tests that do not read the README itself."""
    W = torch.tensor([10.0, 20.0, 5.0, -20.0, -10.0]).to(device)
    return W @ x


def closed_form(W: torch.Tensor, c_bar: float, scale: float, rate: float) -> np.ndarray:
    n = len(W)
    free = math.sqrt(rate / (2 * n * c_bar)) / W.double().abs()
    return free.clamp(max=scale).numpy()


READ_ME = "reference-readme.txt"


def reference_readme() -> str:
    """The reference code's README, from ``shared/reference`` beside the data or the checkout.

    Skips the test when it is absent (fails under ``CI=true``, see ``conftest.py``).
    """
    folders = [shared_data_dir().parent / "reference", REPO_ROOT.parent / "shared" / "reference"]
    for folder in folders:
        if (folder / READ_ME).is_file():
            return (folder / READ_ME).read_text(encoding="utf-8")
    missing_resource(
        f"the reference README {READ_ME} is in none of {[str(f) for f in folders]}; it "
        "lives in shared/reference beside the checkout (or beside $CAPTUM_PERTURB_DATA)"
    )


def _names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """The names a snippet reads, and those it binds (anywhere in it)."""
    loads: set[str] = set()
    binds: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else binds).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            binds.add(node.name)
        elif isinstance(node, ast.arg):
            binds.add(node.arg)
        elif isinstance(node, ast.alias):
            binds.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            binds.add(node.name)
    return loads, binds


def python_snippets(text: str) -> list[str]:
    """The Python snippets of a README whose code fences were lost, in order.

    A paragraph (lines between blank lines) is a snippet when it parses as Python, holds
    at least one statement (a Markdown heading parses as a comment) and reads no name
    that is not a builtin, bound in it or bound by an earlier snippet. That keeps
    prose that happens to parse (``Environment``, ``torch==0.4.1``) and displayed output
    (``array([...], dtype=float32)``: ``array`` is bound nowhere) out.
    """
    known = set(dir(builtins))
    snippets = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        try:
            tree = ast.parse(paragraph)
        except SyntaxError:
            continue
        loads, binds = _names(tree)
        if tree.body and loads <= known | binds:
            snippets.append(paragraph.strip("\n"))
            known |= binds
    return snippets


#: the reference module's import line, and what replaces its module name
REFERENCE_IMPORT = re.compile(r"^(\s*)from Interpreter import ", re.MULTILINE)


def as_dropin(snippet: str) -> str:
    """``snippet`` with ``from Interpreter import X`` lines importing from captum_perturb."""
    return REFERENCE_IMPORT.sub(r"\1from captum_perturb import ", snippet)


def run_snippets(snippets: list[str], namespace: dict[str, Any]) -> list[Any]:
    """Execute the snippets in order in ``namespace``, as typed at a Python prompt.

    Returns:
        Per snippet, the value of its last statement when that is an expression (what
        the prompt would print), else ``None``.
    """
    shown = []
    for i, snippet in enumerate(snippets):
        tree = ast.parse(snippet)
        last = tree.body[-1] if isinstance(tree.body[-1], ast.Expr) else None
        body = tree.body[:-1] if last is not None else tree.body
        exec(compile(ast.Module(body, type_ignores=[]), f"<README snippet {i}>", "exec"), namespace)
        value = None
        if last is not None:
            expr = ast.Expression(last.value)
            value = eval(compile(expr, f"<README snippet {i}>", "eval"), namespace)
        shown.append(value)
    return shown


def test_python_snippets_keep_code_only() -> None:
    # prose that parses, a heading, requirements and displayed output are not code
    text = (
        "# Title\n\nEnvironment\n\ntorch==0.4.1\nnumpy\n\nSome prose: define\n\n"
        "import torch\n\nx = torch.ones(2)\n\nfrom Interpreter import f\n\nf(x)\n\n"
        "the result will be\n\narray([1., 2.], dtype=float32)\n\ndef g(y):\n    return y\n"
    )
    snippets = python_snippets(text)
    assert snippets == [
        "import torch",
        "x = torch.ones(2)",
        "from Interpreter import f",
        "f(x)",
        "def g(y):\n    return y",
    ]
    assert as_dropin(snippets[2]) == "from captum_perturb import f"
    assert [as_dropin(s) for s in snippets[:2]] == snippets[:2]
    namespace: dict[str, Any] = {}
    assert run_snippets(["a = 2", "a + 1", "b = a"], namespace) == [None, 3, None]
    assert namespace["b"] == 2


def test_reference_readme_runs_verbatim() -> None:
    """The README's snippets run on the drop-in and give the σ the README describes.

    Tolerance, from the estimator's own standard errors: the README's Φ is linear, so
    the exact optimum σ_i* is computed from the README's sampled ``regularization``
    (module docstring). The estimator reports the Monte-Carlo standard error SE_i of
    log σ_i; its error is Gaussian to first order with that sd (for a linear state the
    curvature a_i it pools does not depend on σ, so pooling draws across iterations adds
    no bias), and ``SE_FACTOR`` = 4 of them bound it with probability 1 - 6e-5 per word.
    ``ROUND_OFF`` = 1e-4 covers float32 arithmetic (relative 6e-8 per value; sums over
    the 256 state elements stay below 256 · 6e-8 ≈ 2e-5) and the float64 σ_S being used
    in float32. Then: |log σ_i − log σ_i*| ≤ 4 SE_i + 1e-4.

    The README's rounded 0.032/|W_i| (method.md) is the population value of σ_i*: it
    differs from the exact one by the sampling of σ_S from its 100 draws, derived at
    its assertion below.
    """
    text = reference_readme()
    snippets = python_snippets(text)
    code = [as_dropin(s) for s in snippets]
    # only the reference module's import lines change
    changed = [(s, c) for s, c in zip(snippets, code, strict=True) if s != c]
    assert changed, "the README imports nothing from Interpreter: is this the right file?"
    for before, after in changed:
        diff = [
            (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
        ]
        assert all(REFERENCE_IMPORT.match(a) for a, _ in diff), diff
    assert not any(REFERENCE_IMPORT.search(c) for c in code)
    # the snippets call what the drop-in must provide (the extraction found the code)
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for c in code
        for node in ast.walk(ast.parse(c))
        if isinstance(node, ast.Call)
    }
    wanted = {"Interpreter", "calculate_regularization", "to", "optimize", "get_sigma", "visualize"}
    assert wanted <= calls, f"snippets without {wanted - calls}: {snippets}"

    namespace: dict[str, Any] = {"__name__": "__readme__"}
    with torch.random.fork_rng():  # the README draws from the global RNG
        torch.manual_seed(0)
        shown = run_snippets(code, namespace)
    interpreter, words = namespace["interpreter"], namespace["words"]
    assert isinstance(interpreter, Interpreter)  # .to(device) returned the interpreter
    device = torch.device(namespace["device"])
    assert interpreter.x.device.type == device.type

    # what the prompt showed: get_sigma() as the README prints it, visualize()'s figure
    sigma = next(v for c, v in zip(code, shown, strict=True) if c.endswith("get_sigma()"))
    printed = re.search(r"array\(\[[^\]]*\],\s*dtype=(\w+)\)", text)
    assert printed is not None, "the README no longer prints get_sigma()'s array"
    assert isinstance(sigma, np.ndarray) and sigma.shape == (len(words),)
    assert str(sigma.dtype) == printed.group(1)  # float32, as the reference printed
    fig, ax = next(v for c, v in zip(code, shown, strict=True) if c.endswith("visualize()"))
    try:
        assert [t.get_text() for t in ax.get_xticklabels()] == words
        np.testing.assert_array_equal(ax.get_images()[0].get_array(), sigma[None, :])
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)

    # the exact optimum: W read off the README's (linear) Phi, c̄ from its regularization
    x = namespace["x"]
    n = x.shape[0]
    W = namespace["Phi"](torch.eye(n, device=device))
    torch.testing.assert_close(namespace["Phi"](x), W @ x)  # Phi is W @ x
    regularization = np.asarray(namespace["regularization"], dtype=np.float64)
    c_bar = float(np.mean(1.0 / regularization**2))
    expected = closed_form(W.cpu(), c_bar, scale=interpreter.scale, rate=interpreter.rate)
    assert float(expected.max()) < interpreter.scale  # no word at the bound: all have an SE
    estimate = interpreter.estimate
    assert bool(estimate.converged.all())
    se = estimate.std_error[0].double().cpu().numpy()
    assert np.isfinite(se).all()
    err = np.abs(np.log(sigma.astype(np.float64)) - np.log(expected))
    bound = SE_FACTOR * se + ROUND_OFF
    assert (err <= bound).all(), f"|Δ log σ| {err} > {bound}: σ {sigma}, closed form {expected}"

    # ... which is the README's ≈ 0.032/|W_i|: its sampled_x are randn(5, 256)/100, so
    # σ_S,j² = Σ W² / 100² = 0.1025 in the population, and sqrt(0.1 · 0.1025 / (2 · 5))
    # = 0.03202. From N = 100 draws the population variance is σ² χ²_99 / 100, so
    # E[1/σ̂²] = (100/97)/σ² (c̄ +3.1 %, σ* −1.5 %); each 1/σ̂_j² has relative sd
    # sqrt(2/95) = 14.5 % and the 256 elements are independent, so c̄ has relative sd
    # 0.91 % and σ* 0.45 %. Against 0.032 · sqrt(97/100): 5 sd = 2.3 % (+ 0.05 % rounding).
    readme = 0.032 * math.sqrt(97 / 100) / W.abs().double().cpu().numpy()
    np.testing.assert_allclose(expected, readme, rtol=0.0235, atol=0.0)

    # the README's reading: the second and fourth words (|W| = 20) matter most
    assert {words[i] for i in np.argsort(sigma)[:2]} == {"2", "4"}


def test_fallback_normaliser_example() -> None:
    # the README's toy without a regularization: the reference code's mean-square fallback
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = torch.randn(5, 256) / 10
        words = ["1", "2", "3", "4", "5"]

        def Phi(x):  # noqa: N802 (the README's name)
            W = torch.tensor([10.0, 20.0, 5.0, -20.0, -10.0]).to(device)
            return W @ x

        interpreter = Interpreter(x=x, Phi=Phi, words=words)
        with pytest.warns(UserWarning, match="state_std"):  # the fallback normaliser
            interpreter.optimize(iteration=5000, lr=0.01, show_progress=True)
        fig, ax = interpreter.visualize()

    assert [t.get_text() for t in ax.get_xticklabels()] == words
    assert ax.get_images()[0].get_array().shape == (1, 5)
    import matplotlib.pyplot as plt

    plt.close(fig)

    sigma = interpreter.get_sigma()
    assert isinstance(sigma, np.ndarray) and sigma.shape == (5,)
    c_bar = 1.0 / float(Phi(x).double().square().mean())
    expected = closed_form(README_W, c_bar, scale=0.5, rate=0.1)
    assert float(expected.max()) < 0.5  # no word is clamped at scale
    np.testing.assert_allclose(sigma, expected, rtol=RTOL, atol=0.0)
    # the README's reading: words 2 and 4 (|W| = 20) matter most
    assert set(np.argsort(sigma)[:2].tolist()) == {1, 3}


def test_readme_toy_with_corpus_regularization() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 256, generator=gen) / 100
    samples = [torch.randn(5, 256, generator=gen) / 100 for _ in range(100)]
    regularization = calculate_regularization(samples, readme_phi)
    assert regularization.shape == (256,)

    interpreter = Interpreter(x, readme_phi, scale=1.0, rate=0.1, regularization=regularization)
    interpreter.optimize()
    c_bar = float(np.mean(1.0 / regularization**2))
    expected = closed_form(README_W, c_bar, scale=1.0, rate=0.1)
    np.testing.assert_allclose(interpreter.get_sigma(), expected, rtol=RTOL, atol=0.0)

    # The closed form is ≈ 0.032/|W_i| (method.md): s_j = Σ_i W_i x_ij has variance
    # σ² = Σ W_i² / 100² = 0.1025, so sqrt(0.1 σ² / (2·5)) = 0.03202. From 100 samples
    # the population variance is σ² χ²_99 / 100, so E[1/σ̂²] = (100/97)/σ² (c̄ +3.1 %,
    # σ −1.5 %); each 1/σ̂_j² has relative sd ≈ sqrt(2/99) ≈ 14 % and the 256 elements
    # are independent, so c̄ has relative sd 0.9 % (σ: 0.45 %). 4 % covers bias + 5 sd.
    population = math.sqrt(0.1 * float(README_W.square().sum()) / 100**2 / (2 * 5))
    np.testing.assert_allclose(
        expected, population / README_W.abs().double().numpy(), rtol=0.04, atol=0.0
    )


def test_adam_config_honours_iteration_and_lr() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 16, generator=gen)
    reg = torch.ones(16)
    interpreter = Interpreter(x, readme_phi, regularization=reg, config=REFERENCE, seed=3)
    interpreter.optimize(iteration=100, lr=0.1)
    assert interpreter.estimate.n_iter == 100

    # the same run through the functional core with steps=100, lr=0.1, seed 3
    groups = torch.arange(5)[:, None].expand(5, 16)[None]
    direct = estimate_sigma(
        lambda inputs, rows: torch.stack([readme_phi(c) for c in inputs[0]]),
        (x[None],),
        (groups,),
        sigma_max=0.5,
        rate=0.1,
        state_std=reg,
        config=replace(REFERENCE, steps=100, lr=0.1),
        generator=torch.Generator().manual_seed(3),
    )
    np.testing.assert_array_equal(interpreter.get_sigma(), direct.sigma[0].numpy())

    interpreter.optimize(iteration=100, lr=0.01)  # a different lr gives a different σ
    assert not np.allclose(interpreter.get_sigma(), direct.sigma[0].numpy(), rtol=0.01)


def test_default_config_ignores_iteration_and_lr() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 16, generator=gen)
    interpreter = Interpreter(x, readme_phi, regularization=torch.ones(16))
    interpreter.optimize()
    first = interpreter.get_sigma()
    interpreter.optimize(iteration=3, lr=100.0)
    np.testing.assert_array_equal(interpreter.get_sigma(), first)


def test_scalar_state() -> None:
    # Φ(x) = Σ_ij W_i x_ij (one number, M = 1): J_i = W_i·1ᵀ_K, so with σ_S = s
    # a_i = K W_i² / s² and σ_i = sqrt(rate / (2 n K)) · s / |W_i|
    K, s = 8, 3.0
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, K, generator=gen)
    interpreter = Interpreter(x, lambda x: (README_W @ x).sum(), scale=10.0, regularization=s)
    interpreter.optimize()
    expected = math.sqrt(0.1 / (2 * 5 * K)) * s / README_W.abs().double().numpy()
    np.testing.assert_allclose(interpreter.get_sigma(), expected, rtol=RTOL, atol=0.0)


def test_calculate_regularization_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(6)
    samples = [torch.randn(5, 12, generator=gen) for _ in range(30)]
    states = np.stack([readme_phi(x).numpy().astype(np.float64) for x in samples])
    np.testing.assert_allclose(
        calculate_regularization(samples, readme_phi), np.std(states, axis=0), rtol=1e-6, atol=0.0
    )


def test_calculate_regularization_reduced_axes() -> None:
    # states of different lengths [L, 3] are averaged over the token axis, keeping it
    gen = torch.Generator().manual_seed(7)
    samples = [torch.randn(length, 3, generator=gen) for length in (2, 5, 3, 7)]
    std = calculate_regularization(samples, lambda x: 2 * x, reduced_axes=[0])
    means = np.stack([(2 * x).mean(dim=0, keepdim=True).double().numpy() for x in samples])
    assert std.shape == (1, 3)
    np.testing.assert_allclose(std, np.std(means, axis=0), rtol=1e-6, atol=0.0)
    with pytest.raises(ValueError, match="shapes"):
        calculate_regularization(samples, lambda x: 2 * x)
    with pytest.raises(ValueError, match="out of range"):
        calculate_regularization(samples, lambda x: 2 * x, reduced_axes=[2])
    with pytest.raises(ValueError, match="empty"):
        calculate_regularization([], readme_phi)


def test_to_moves_and_casts_what_the_interpreter_holds() -> None:
    # nn.Module.to's forms, in place, returning self; the caller's tensors stay as they were
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(8))
    x_before = x.clone()
    reg = np.full(16, 2.0)

    def phi(x: torch.Tensor) -> torch.Tensor:  # follows x's dtype, unlike the README's
        return README_W.to(x) @ x

    interpreter = Interpreter(x, phi, regularization=reg, config=EXACT)
    assert interpreter.to("cpu") is interpreter
    assert interpreter.x is x  # nothing to move: Tensor.to's no-copy
    assert isinstance(interpreter.regularization, torch.Tensor)
    assert interpreter.regularization.dtype == torch.float64  # an array keeps its dtype

    assert interpreter.to(torch.float64) is interpreter
    assert interpreter.x.dtype == torch.float64 and interpreter.x.device.type == "cpu"
    torch.testing.assert_close(interpreter.x, x_before.double(), rtol=0.0, atol=0.0)
    assert x.dtype == torch.float32 and torch.equal(x, x_before)
    assert reg.dtype == np.float64 and (reg == 2.0).all()
    interpreter.optimize()
    sigma64 = interpreter.get_sigma()
    assert sigma64.dtype == np.float64  # σ is learned in x's dtype

    interpreter.to(torch.zeros(1, dtype=torch.float32))  # a tensor's device and dtype
    assert interpreter.x.dtype == torch.float32
    assert interpreter.regularization.dtype == torch.float32
    interpreter.optimize()
    sigma32 = interpreter.get_sigma()
    assert sigma32.dtype == np.float32
    # EXACT is exact for this linear state (σ_S = 2: c̄ = 1/4), in either dtype up to
    # the float32 round-off that contract.ROUND_OFF bounds in log σ
    expected = closed_form(README_W, 0.25, scale=0.5, rate=0.1)
    for sigma in (sigma64, sigma32):
        assert np.abs(np.log(sigma.astype(np.float64) / expected)).max() <= ROUND_OFF, sigma

    interpreter.to("meta", torch.float16)  # a device move without a GPU
    assert interpreter.x.device.type == "meta" and interpreter.x.dtype == torch.float16
    assert interpreter.regularization.device.type == "meta"
    assert x.device.type == "cpu" and torch.equal(x, x_before)
    np.testing.assert_array_equal(interpreter.get_sigma(), sigma32)  # the last result stays

    scalar = Interpreter(x, readme_phi, regularization=3.0).to(torch.float64)
    assert scalar.regularization == 3.0 and isinstance(scalar.regularization, float)
    assert Interpreter(x, readme_phi).to(torch.float64).regularization is None


def test_to_rejects_what_it_cannot_do() -> None:
    interpreter = Interpreter(torch.randn(5, 4), readme_phi)
    with pytest.raises(TypeError, match="floating-point"):
        interpreter.to(torch.long)
    with pytest.raises(TypeError, match="floating-point"):
        interpreter.to("cpu", dtype="float64")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="positionally"):
        interpreter.to(torch.float64, torch.float32)
    assert interpreter.x.dtype == torch.float32  # a rejected call changes nothing


def test_validation() -> None:
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="one instance"):
        Interpreter(torch.randn(1, 5, 4), readme_phi)
    with pytest.raises(TypeError, match="floating"):
        Interpreter(torch.ones(5, 4, dtype=torch.long), readme_phi)
    with pytest.raises(ValueError, match="words"):
        Interpreter(x, readme_phi, words=["a", "b"])
    with pytest.raises(RuntimeError, match="optimize"):
        Interpreter(x, readme_phi).get_sigma()
