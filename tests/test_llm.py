"""The LLM entry point on tiny GPT-2, Llama and Qwen2 configs and a position-local LM.

What must hold: Captum's result type and plots; seq_attr and token_attr from one batched
estimator call that agrees with separate calls within the reported error; exact zeros
where the next-token distribution cannot depend on a prompt token; template segments as
groups; generation with gen_args; the layer-by-layer question at the answer position;
Captum's LLMGradientAttribution route; clear errors on bad input; the model untouched.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch
from captum.attr import (
    LayerIntegratedGradients,
    LLMAttributionResult,
    LLMGradientAttribution,
    TextTemplateInput,
    TextTokenInput,
)
from contract import ROUND_OFF, SE_FACTOR, assert_model_untouched, model_snapshot
from llm_models import BOS, FAMILIES, PositionLocalLM, causal_lm, tokenizer
from torch import nn

import captum_perturb.llm.attribution as llm_module
from captum_perturb import (
    FixedPointConfig,
    LayerPerturbationEntropyAttribution,
    LLMLayerAttribution,
    LLMPerturbationEntropyAttribution,
    LLMPerturbationEntropyResult,
    next_token_state_std,
)

matplotlib.use("Agg")

PROMPT = "the film is a"
ANSWER = " charming and funny ride"
CORPUS = ["the film is a charming ride .", "a dull and boring plot .", "it was not very good"]


def _std(model: nn.Module) -> torch.Tensor:
    return next_token_state_std(model, tokenizer(), CORPUS)


@pytest.mark.parametrize("family", FAMILIES)
def test_snippet_result_and_plots(family: str) -> None:
    """The issue's snippet: Captum's result, nats >= 0, plots render, model untouched."""
    tok = tokenizer()
    model = causal_lm(family).train()  # left in train mode by the caller: restored after
    before = model_snapshot(model)
    llm_attr = LLMPerturbationEntropyAttribution(model, tok, state_std=_std(model))
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
    res = llm_attr.attribute(inp, target=ANSWER)
    assert isinstance(res, LLMAttributionResult) and isinstance(res, LLMPerturbationEntropyResult)
    assert res.input_tokens == ["the", "film", "is", "a"]
    assert res.output_tokens == ["charming", "and", "funny", "ride"]
    assert res.seq_attr.shape == (4,) and res.token_attr is not None
    assert res.token_attr.shape == (4, 4)
    assert bool((res.seq_attr >= 0).all()) and bool((res.token_attr >= 0).all())
    assert res.normaliser == "state_std" and res.output_probs is not None
    assert res.seq_std_error.shape == (4,) and res.converged.shape == (5,)
    for fig, _ in (res.plot_token_attr(show=False), res.plot_seq_attr(show=False)):
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        png = buf.getvalue()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert_model_untouched(model, before)


def test_one_batched_call_matches_separate_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """token_attr comes from one estimator call; each row agrees with a call that
    explains that answer token alone, within SE_FACTOR × the combined standard error
    (the contract tester's bound, derived in tests/contract.py)."""
    tok = tokenizer()
    model = causal_lm("gpt2")
    std = _std(model)
    llm_attr = LLMPerturbationEntropyAttribution(model, tok, state_std=std)
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[BOS])
    calls: list[int] = []
    real = llm_module.estimate_sigma

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(llm_module, "estimate_sigma", counting)
    res = llm_attr.attribute(inp, target=ANSWER)
    assert len(calls) == 1
    answer = tok.encode(ANSWER, add_special_tokens=False)
    for t in range(len(answer)):
        prefix = tok.decode(tok.encode(PROMPT, add_special_tokens=False) + answer[:t])
        alone = llm_attr.attribute(
            TextTokenInput(prefix, tok, skip_tokens=[BOS]),
            target=torch.tensor(answer[t : t + 1]),
            per_token=False,
            seed=100 + t,
        )
        n = len(res.input_tokens)
        assert res.token_std_error is not None
        bound = SE_FACTOR * (res.token_std_error[t] ** 2 + alone.seq_std_error[:n] ** 2).sqrt()
        gap = (res.token_attr[t] - alone.seq_attr[:n]).abs()
        # ROUND_OFF: float32 round-off where a standard error is ~0 (tests/contract.py)
        assert bool((gap <= bound + ROUND_OFF).all()), (t, gap, bound)


def test_exact_zeros_where_the_answer_cannot_depend_on_a_token() -> None:
    """Position-local logits: only the last prompt token can move the first answer
    distribution, and no prompt token moves the later ones."""
    model = PositionLocalLM()
    tok = tokenizer()
    llm_attr = LLMPerturbationEntropyAttribution(model, tok, state_std=_std(model))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = llm_attr.attribute(TextTokenInput(PROMPT, tok, skip_tokens=[BOS]), target=ANSWER)
    assert res.token_attr is not None
    assert bool((res.seq_attr[:-1] == 0).all()) and float(res.seq_attr[-1]) > 0
    assert bool((res.token_attr[0, :-1] == 0).all()) and float(res.token_attr[0, -1]) > 0
    assert bool((res.token_attr[1:] == 0).all())
    assert any("does not depend on any perturbed group" in str(w.message) for w in seen)


def test_template_segments_are_groups() -> None:
    """One σ per segment (shared by its tokens); grouped values get one score; the
    template's own words are not perturbed."""
    tok = tokenizer()
    model = PositionLocalLM()
    llm_attr = LLMPerturbationEntropyAttribution(model, tok, state_std=_std(model))
    inp = TextTemplateInput("{} is {}", values=["the film", "a charming"])
    res = llm_attr.attribute(inp, target=" ride")
    assert res.input_tokens == ["the film", "a charming"]
    assert float(res.seq_attr[0]) == 0 and float(res.seq_attr[1]) > 0  # position-local
    est = res.estimate
    assert int((est.group_size[0] > 0).sum()) == 2  # two segments, two σ
    dim = model.embed.embedding_dim
    assert est.group_size[0].tolist() == [2 * dim, 2 * dim]  # two tokens each
    ended = llm_attr.attribute(TextTemplateInput("{} is {} .", values=["a", "film"]), target="x")
    assert bool((ended.seq_attr == 0).all())  # the last token is the template's "."
    grouped = TextTemplateInput("{} {} {}", values=["the", "film", "is"], mask=[0, 1, 0])
    res = llm_attr.attribute(grouped, target=" a")
    assert res.seq_attr.shape == (3,) and float(res.seq_attr[0]) == float(res.seq_attr[2])


def test_generation_with_gen_args() -> None:
    """target=None generates as Captum does; the answer is the model's greedy one."""
    tok = tokenizer()
    model = causal_lm("gpt2")
    llm_attr = LLMPerturbationEntropyAttribution(model, tok, state_std=_std(model))
    inp = TextTokenInput(PROMPT, tok)
    res = llm_attr.attribute(inp, gen_args={"max_new_tokens": 3, "do_sample": False})
    ids = inp.to_model_input()
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3)
    expected = tok.convert_ids_to_tokens(greedy[0, ids.shape[1] :].tolist())
    assert res.output_tokens == expected and res.token_attr is not None
    assert res.token_attr.shape == (3, 5)  # BOS kept: no skip_tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_at_the_answer_position(family: str) -> None:
    """explain_layers through the LLM entry point (RoPE, GQA, KV cache off): the
    embedding output at the answer position holds the last prompt token alone (exact);
    every layer keeps that token, and the other prompt tokens are perturbed (finite)."""
    tok = tokenizer()
    model = causal_lm(family)
    llm_attr = LLMPerturbationEntropyAttribution(model, tok)
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[BOS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no σ_S: the fallback's warning
        info = llm_attr.explain_layers(inp, config=FixedPointConfig(max_iter=40))
    assert info.layers == [0, 1, 2]
    nats = info.nats_kept[0]  # layers × tokens; BOS not perturbed (NaN)
    assert bool(nats[:, 0].isnan().all())
    assert bool((nats[0, 1:-1] == 0).all()) and float(nats[0, -1]) > 0
    assert bool((nats[:, -1] > 0).all()) and bool(nats[:, 1:].isfinite().all())


def test_llm_gradient_attribution_route() -> None:
    """Captum's wrapper refuses our layer class; LLMLayerAttribution takes it, with
    LayerIntegratedGradients' result shapes, and each row of ``token_attr`` is bit for bit
    our layer method called directly on Φ = that answer token's log-probability given
    the prompt and the answer before it (teacher forcing; every position's embedding its
    own group, the answer prefix's cut off and the skipped BOS dropped, as Captum does)."""
    tok = tokenizer()
    model = causal_lm("gpt2")
    emb = model.get_input_embeddings()
    ours = LayerPerturbationEntropyAttribution(model, emb)
    with pytest.raises(AssertionError, match="does not support"):
        LLMGradientAttribution(ours, tok)
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[BOS])
    lig = LLMGradientAttribution(LayerIntegratedGradients(model, emb), tok).attribute(
        inp, target=ANSWER, n_steps=8
    )
    std, config = torch.tensor(2.0), FixedPointConfig(max_iter=30)
    res = LLMLayerAttribution(ours, tok).attribute(
        inp, target=ANSWER, state_std=std, config=config, seed=3
    )
    assert res.seq_attr.shape == lig.seq_attr.shape
    assert res.token_attr is not None and lig.token_attr is not None
    assert res.token_attr.shape == lig.token_attr.shape
    assert torch.allclose(res.seq_attr, res.token_attr.sum(0))
    prompt = inp.to_model_input()
    answer = torch.tensor(tok.encode(ANSWER, add_special_tokens=False))
    for t in range(len(answer)):

        def log_prob(ids: torch.Tensor, t: int = t) -> torch.Tensor:
            return model(ids).logits[:, -1].log_softmax(-1)[:, answer[t]]

        direct = LayerPerturbationEntropyAttribution(log_prob, emb).attribute(
            torch.cat([prompt, answer[:t].unsqueeze(0)], 1), state_std=std, config=config, seed=3
        )
        expected = direct.sum(-1)[0, : prompt.shape[1]][inp.itp_mask[0]]
        assert torch.equal(res.token_attr[t], expected), t
        assert float(expected.sum()) > 0


def test_next_token_state_std_is_the_pooled_std() -> None:
    """σ_S = the std of each vocabulary log-prob over every real position (float64)."""
    tok = tokenizer()
    model = causal_lm("llama")
    got = next_token_state_std(model, tok, CORPUS, batch_size=2)
    rows = []
    with torch.no_grad():
        for text in CORPUS:
            ids = tok(text, return_tensors="pt")["input_ids"]
            rows.append(torch.log_softmax(model(ids).logits[0].double(), -1))
    want = torch.cat(rows).std(0, unbiased=False)
    assert torch.allclose(got.double(), want, rtol=1e-4)


def _bad_calls(llm_attr: Any, tok: Any) -> list[tuple[Any, type[Exception], str]]:
    inp = TextTokenInput(PROMPT, tok)
    return [
        (lambda: llm_attr.attribute(inp, target=""), ValueError, "0 tokens"),
        (lambda: llm_attr.attribute(inp, target=" film" * 40), ValueError, "context of 32"),
        (lambda: llm_attr.attribute(PROMPT, target=ANSWER), TypeError, "TextTokenInput"),
        (lambda: llm_attr.attribute(inp, target=1.5), TypeError, "target must be"),
        (lambda: llm_attr.attribute(inp, target="a", gen_args={}), ValueError, "gen_args"),
        (lambda: llm_attr.attribute(inp, target="a", rate=0), ValueError, "rate"),
        (
            lambda: llm_attr.attribute(TextTokenInput("a", tok, skip_tokens=[BOS, 5]), target="a"),
            ValueError,
            "no token to explain",
        ),
    ]


def test_bad_input_gets_a_clear_error_and_the_model_is_untouched() -> None:
    tok = tokenizer()
    model = causal_lm("gpt2").train()
    before = model_snapshot(model)
    llm_attr = LLMPerturbationEntropyAttribution(model, tok)
    for call, kind, text in _bad_calls(llm_attr, tok):
        with pytest.raises(kind, match=text):
            call()
        assert_model_untouched(model, before)
    no_generate = LLMPerturbationEntropyAttribution(PositionLocalLM(), tok)
    with pytest.raises(ValueError, match="no generate"):
        no_generate.attribute(TextTokenInput(PROMPT, tok))
    with pytest.raises(ValueError, match="get_input_embeddings"):
        LLMPerturbationEntropyAttribution(nn.Linear(2, 2), tok)


def test_other_paths_leave_the_model_untouched() -> None:
    """explain_layers and the LLMGradientAttribution route, from train mode."""
    tok = tokenizer()
    model = causal_lm("llama").train()
    before = model_snapshot(model)
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[BOS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LLMPerturbationEntropyAttribution(model, tok).explain_layers(
            inp, layers=[1], config=FixedPointConfig(max_iter=5)
        )
        assert_model_untouched(model, before)
        ours = LayerPerturbationEntropyAttribution(model, model.get_input_embeddings())
        LLMLayerAttribution(ours, tok).attribute(
            inp, target=" ride", state_std=torch.tensor(2.0), config=FixedPointConfig(max_iter=5)
        )
    assert_model_untouched(model, before)


def test_bfloat16_model_on_cpu() -> None:
    """A bfloat16 model gives the σ of the same rounded weights in float32 (the values
    are perturbed and compared in float32, the model runs in bfloat16), and stays in
    bfloat16. Tolerance as ``test_contract.test_half_precision_matches_float32``'s:
    Monte-Carlo ``SE_FACTOR sqrt(se_h² + se_f²)`` plus ``n u`` for the model's rounding,
    n = 28 rounded operations from the embeddings to the log-probabilities (12 per GPT-2
    block: LayerNorm, QKV, softmax, attention·V, projection, residual, LayerNorm, MLP in,
    GELU, MLP out, residual, bias; 2 blocks; final LayerNorm, LM head, log-softmax and the
    teacher-forced log-prob), u = 2⁻⁸ bfloat16's unit roundoff."""
    import copy

    tok = tokenizer()
    model = causal_lm("gpt2")
    std = _std(model)
    half = model.to(torch.bfloat16)
    full = copy.deepcopy(half).float()  # the same rounded weights, float32 arithmetic
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[BOS])
    cfg = FixedPointConfig(max_iter=400)
    results = [
        LLMPerturbationEntropyAttribution(m, tok, state_std=std).attribute(
            inp, target=ANSWER, per_token=False, config=cfg
        )
        for m in (half, full)
    ]
    res_h, res_f = results
    assert res_h.token_attr is None and bool((res_h.seq_attr > 0).all())
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert bool(res_h.converged.all() and res_f.converged.all())
    ls_h, ls_f = res_h.estimate.log_sigma, res_f.estimate.log_sigma
    se_h, se_f = res_h.estimate.std_error, res_f.estimate.std_error
    present = ~ls_f.isnan()
    assert torch.equal(present, ~ls_h.isnan())
    tol = SE_FACTOR * (se_h.square() + se_f.square()).sqrt() + 28 * 2.0**-8
    diff = (ls_h - ls_f).abs()
    assert bool((diff[present] <= tol[present]).all()), (diff, tol)


def test_next_token_state_std_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cache_dir: the second call loads the file (no forward pass), another corpus or
    other weights get another key."""
    tok = tokenizer()
    model = causal_lm("gpt2")
    first = next_token_state_std(model, tok, CORPUS, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("next-token-std-*.pt"))) == 1

    def no_forward(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("computed again instead of loading the cache")

    with monkeypatch.context() as patch:
        patch.setattr(model, "forward", no_forward)
        assert torch.equal(next_token_state_std(model, tok, CORPUS, cache_dir=tmp_path), first)
    next_token_state_std(model, tok, CORPUS[:2], cache_dir=tmp_path)
    next_token_state_std(causal_lm("gpt2", seed=1), tok, CORPUS, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("next-token-std-*.pt"))) == 3
