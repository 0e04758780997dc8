"""The LLM comparison: which prompt tokens a causal LM's own answer depends on, by method.

On a GPT-2 trained on SST-2 (:func:`comparisons.models.language_model.sst2_language_model`), the
prompt of example ``i`` is the first half of the words of SST-2 dev sentence ``i`` (dev
sentences of fewer than :data:`MIN_WORDS` words are skipped) and the target is the
model's own greedy continuation (:data:`MAX_NEW_TOKENS` tokens, cut at EOS, which is
dropped; prompts whose continuation is empty are skipped). Every method gives
``seq_attr``, one score per prompt token, BOS skipped (Captum's ``skip_tokens``):

* ``ours``: :class:`~captum_perturb.LLMPerturbationEntropyAttribution`, ``seq_attr``
  alone, σ_S from :func:`~captum_perturb.next_token_state_std` over the first-half
  prompts of :data:`CORPUS_SIZE` SST-2 *train* sentences (cached in the run folder);
* ``feature_ablation``, ``shapley_sampling``, ``kernel_shap``: Captum's
  ``LLMAttribution`` with Captum's defaults but one (:data:`CAPTUM_SETTINGS`);
* ``layer_ig``: ``LLMGradientAttribution(LayerIntegratedGradients)`` on the input
  embeddings, ``n_steps=50``, the reference of the paired differences;
* ``random``: a seeded random ranking, the floor.

Metrics per example (higher is better for both; :func:`faithfulness`): ``drop_top_k``,
the drop of the target's total log-probability (teacher forcing) when the top-k prompt
tokens are deleted, and ``drop_keep_bottom_k``, the drop when the prompt is cut down to
its k least important tokens, each averaged over ``k = 1 … min(3, n − 1)``. Tied scores
are never ordered by position: a metric is the mean over :data:`N_TIE_ORDERS` seeded
random orders of the ties. Also ``abstained`` (1 when ``seq_attr`` is constant),
``seconds`` and, for ours, ``converged``. A signed method is ranked by its score and,
as the method ``"<name>|abs"``, by its magnitude (as in :mod:`comparisons.study.run`).

The run folder is a :class:`~comparisons.study.store.RunStore` (resumed when run again) with
``report.html``, whose ★ and paired-difference table use the paired bootstrap of
:mod:`comparisons.study.store`::

    python -m comparisons llm-study --n 50 --out outputs/llm_study
"""

from __future__ import annotations

import datetime
import math
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from comparisons.metrics import N_TIE_ORDERS, tie_orders
from comparisons.study.store import RunStore
from comparisons.study.vocabulary import HEADLINE

MIN_WORDS = 4
MAX_NEW_TOKENS = 8
CORPUS_SIZE = 500
MAX_K = 3
REFERENCE = "layer_ig"
IG_STEPS = 50
CAPTUM_SETTINGS = {"baseline_token_id": 0, "forward_in_tokens": False, "n_samples": 25}
"""How the three ``LLMAttribution`` methods run. Captum's defaults, but one: the
``TextTokenInput`` baseline id 0 (``<|endoftext|>`` for the SST-2 GPT-2), 25 permutations
(ShapleyValueSampling) or coalitions (KernelShap); the answer is scored in one teacher-forced
pass (``forward_in_tokens=False``), not by Captum 0.9's default token-by-token decoding with
the KV cache, which under transformers 5 feeds the whole sequence again with the cache and a
stale ``cache_position``: from the second answer token on its log-probs are not the model's
(and past the context it raises). ``forward_in_tokens=False`` gives the log-probs of
token-by-token decoding without the cache, and the ones the metrics and the other methods
use; the Captum change that exposed the flag (meta-pytorch/captum#1742) says its default
will become False."""

CAPTUM_NOTE = (
    "Captum's LLMAttribution methods run with forward_in_tokens=False (one teacher-forced "
    "pass, announced as Captum's future default): its current default, token-by-token "
    "decoding with the KV cache, gives wrong log-probs from the second answer token on under "
    "transformers 5 (the whole sequence is fed again with the cache); baseline token id 0 "
    "(Captum's default) for all three and for layer_ig"
)

METRICS = {
    "drop_top_k": {
        "better": "higher",
        "description": "drop of the target's total log-prob (teacher forcing) when the top-k "
        f"prompt tokens are deleted, mean over k = 1..min({MAX_K}, n-1); ties: mean over "
        f"{N_TIE_ORDERS} seeded random orders",
    },
    "drop_keep_bottom_k": {
        "better": "higher",
        "description": "drop of the target's total log-prob when the prompt is reduced to its "
        f"k least important tokens (BOS kept), mean over k = 1..min({MAX_K}, n-1); ties as "
        "above",
    },
    "abstained": {
        "better": "lower",
        "description": "1 when the explanation ranks nothing (it is constant), else 0",
    },
    "converged": {"better": "higher", "description": "ours: the estimate met its stopping rule"},
    "seconds": {"better": "lower", "description": "wall time of the explanation (s)"},
}


@dataclass(frozen=True)
class LLMExample:
    """One prompt and the model's answer to it.

    Attributes:
        id: ``dev-NNNN``, NNNN the row of the sentence in ``dev.tsv``.
        prompt: the first half of the sentence's words.
        prompt_ids: ``(P,)`` its token ids, BOS first.
        features: ``(n,)`` positions in ``prompt_ids`` of the explained tokens (not BOS).
        tokens: the explained tokens, readable.
        target: ``(T,)`` the greedy continuation's ids (no EOS).
        continuation: its text.
        seed: this example's seed (from the run's seed and ``id``).
    """

    id: str
    prompt: str
    prompt_ids: Tensor
    features: Tensor
    tokens: list[str]
    target: Tensor
    continuation: str
    seed: int


def example_seed(seed: int, example_id: str) -> int:
    """A seed per example that does not depend on the order examples are run in."""
    return zlib.crc32(f"{seed}:{example_id}".encode()) & 0x7FFFFFFF


def first_half(sentence: str) -> str | None:
    """The first half of the words of ``sentence``; None under :data:`MIN_WORDS` words."""
    words = sentence.split()
    return " ".join(words[: len(words) // 2]) if len(words) >= MIN_WORDS else None


@torch.no_grad()
def greedy_answer(model: nn.Module, tokenizer: Any, prompt_ids: Tensor) -> Tensor:
    """The greedy continuation of ``prompt_ids`` ``(P,)``: at most :data:`MAX_NEW_TOKENS`
    new ids, cut before the first EOS."""
    ids = prompt_ids.unsqueeze(0)
    out = model.generate(  # type: ignore[operator]
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )[0, ids.shape[1] :]
    stop = (out == tokenizer.eos_token_id).nonzero()
    return out[: int(stop[0])] if len(stop) else out


def build_examples(
    model: nn.Module, tokenizer: Any, sentences: Sequence[str], n: int, seed: int = 0
) -> tuple[list[LLMExample], dict[str, int]]:
    """The first ``n`` usable prompts of ``sentences`` (dev) and the model's answers.

    Returns:
        The examples and how many sentences were skipped before the ``n``-th, by reason:
        ``short`` (under :data:`MIN_WORDS` words), ``one_token`` (a prompt of one token:
        no k to score), ``empty`` (the continuation is EOS at once).
    """
    from captum.attr import TextTokenInput

    examples: list[LLMExample] = []
    skipped = {"short": 0, "one_token": 0, "empty": 0}
    bos = tokenizer.bos_token_id
    for i, sentence in enumerate(sentences):
        if len(examples) == n:
            break
        prompt = first_half(sentence)
        if prompt is None:
            skipped["short"] += 1
            continue
        ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
        features = (ids != bos).nonzero().flatten()
        if len(features) < 2:
            skipped["one_token"] += 1
            continue
        target = greedy_answer(model, tokenizer, ids)
        if len(target) == 0:
            skipped["empty"] += 1
            continue
        ex_id = f"dev-{i:04d}"
        examples.append(
            LLMExample(
                id=ex_id,
                prompt=prompt,
                prompt_ids=ids,
                features=features,
                # Captum's names of the prompt's features, as its LLM results show them
                tokens=TextTokenInput(prompt, tokenizer, skip_tokens=[bos]).values,
                target=target,
                continuation=tokenizer.decode(target),
                seed=example_seed(seed, ex_id),
            )
        )
    return examples, skipped


def corpus_prompts(sentences: Sequence[str], size: int = CORPUS_SIZE) -> list[str]:
    """The first-half prompts of the first ``size`` usable sentences (σ_S's corpus)."""
    prompts = [p for p in map(first_half, sentences) if p is not None]
    return prompts[:size]


# ------------------------------------------------------------------------------ methods
Explain = Callable[[LLMExample], tuple[Tensor, dict[str, Any]]]
"""One example -> ``(n,)`` seq_attr over its prompt tokens and extra facts to store."""


@dataclass
class LLMContext:
    """What the methods of one run share: the model, its tokenizer and σ_S."""

    model: nn.Module
    tokenizer: Any
    state_std: Tensor | None = None

    def text_input(self, ex: LLMExample) -> Any:
        """Captum's ``TextTokenInput`` of the prompt, BOS skipped, Captum's baseline."""
        from captum.attr import TextTokenInput

        return TextTokenInput(
            ex.prompt,
            self.tokenizer,
            baselines=CAPTUM_SETTINGS["baseline_token_id"],
            skip_tokens=[self.tokenizer.bos_token_id],
        )


@dataclass(frozen=True)
class LLMMethod:
    """A method of the LLM study (the fields of ``meta.json`` and how to build it)."""

    name: str
    signed: bool
    family: str
    stochastic: bool
    description: str
    build: Callable[[LLMContext], Explain]


def ours(ctx: LLMContext, per_token: bool = False) -> Explain:
    """Our method's explainer: ``seq_attr`` (and, with ``per_token``, ``token_attr`` in the
    same call, as the benchmark times it)."""
    from captum_perturb import LLMPerturbationEntropyAttribution

    llm_attr = LLMPerturbationEntropyAttribution(ctx.model, ctx.tokenizer, state_std=ctx.state_std)

    def explain(ex: LLMExample) -> tuple[Tensor, dict[str, Any]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unconverged estimates are recorded instead
            res = llm_attr.attribute(
                ctx.text_input(ex), target=ex.target, per_token=per_token, seed=ex.seed
            )
        return res.seq_attr, {
            "converged": bool(res.converged.all()),
            "std_error": res.seq_std_error.tolist(),
            "evaluations": int(res.estimate.n_evaluations),
        }

    return explain


def _captum_perturbation(kind: str) -> Callable[[LLMContext], Explain]:
    def build(ctx: LLMContext) -> Explain:
        from captum.attr import FeatureAblation, KernelShap, LLMAttribution, ShapleyValueSampling

        from comparisons.models.surrogate import WeightedLeastSquares
        from comparisons.study.methods import seeded

        method: Any = {
            "feature_ablation": FeatureAblation,
            "shapley_sampling": ShapleyValueSampling,
            "kernel_shap": KernelShap,
        }[kind](ctx.model)
        kwargs = {} if kind == "feature_ablation" else {"n_samples": CAPTUM_SETTINGS["n_samples"]}
        if kind == "kernel_shap":  # Captum's default fit needs scikit-learn: the same fit
            method.interpretable_model = WeightedLeastSquares()
        llm_attr = LLMAttribution(method, ctx.tokenizer)

        def explain(ex: LLMExample) -> tuple[Tensor, dict[str, Any]]:
            with seeded(ex.seed):
                res = llm_attr.attribute(
                    ctx.text_input(ex),
                    target=ex.target,
                    forward_in_tokens=CAPTUM_SETTINGS["forward_in_tokens"],
                    **kwargs,
                )
            return res.seq_attr, {}

        return explain

    return build


def _layer_ig(ctx: LLMContext) -> Explain:
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution

    embeddings = ctx.model.get_input_embeddings()  # type: ignore[operator]
    llm_attr = LLMGradientAttribution(
        LayerIntegratedGradients(ctx.model, embeddings), ctx.tokenizer
    )

    def explain(ex: LLMExample) -> tuple[Tensor, dict[str, Any]]:
        res = llm_attr.attribute(ctx.text_input(ex), target=ex.target, n_steps=IG_STEPS)
        return res.seq_attr, {}

    return explain


def _random(ctx: LLMContext) -> Explain:
    def explain(ex: LLMExample) -> tuple[Tensor, dict[str, Any]]:
        return torch.rand(len(ex.features), generator=torch.Generator().manual_seed(ex.seed)), {}

    return explain


_CAPTUM = (
    "Captum LLMAttribution, baseline token id 0 (Captum's default), the answer scored in one "
    "teacher-forced pass (forward_in_tokens=False; see the notes)"
)
LLM_METHODS = {
    m.name: m
    for m in (
        LLMMethod(
            name="ours",
            signed=False,
            family="ours",
            stochastic=True,
            description="LLMPerturbationEntropyAttribution, seq_attr only (per_token=False), "
            f"nats; σ_S = next_token_state_std over {CORPUS_SIZE} first-half SST-2 train "
            "prompts; default estimator; seed per example",
            build=ours,
        ),
        LLMMethod(
            name="feature_ablation",
            signed=True,
            family="perturbation",
            stochastic=False,
            description=f"{_CAPTUM}; FeatureAblation (each token replaced by the baseline)",
            build=_captum_perturbation("feature_ablation"),
        ),
        LLMMethod(
            name="shapley_sampling",
            signed=True,
            family="perturbation",
            stochastic=True,
            description=f"{_CAPTUM}; ShapleyValueSampling, 25 permutations; seed per example",
            build=_captum_perturbation("shapley_sampling"),
        ),
        LLMMethod(
            name="kernel_shap",
            signed=True,
            family="perturbation",
            stochastic=True,
            description=f"{_CAPTUM}; KernelShap, 25 coalitions, Captum's weighted linear "
            "regression fitted exactly (comparisons.models.surrogate: scikit-learn is not "
            "installed); seed per example",
            build=_captum_perturbation("kernel_shap"),
        ),
        LLMMethod(
            name=REFERENCE,
            signed=True,
            family="gradient",
            stochastic=False,
            description="Captum LLMGradientAttribution(LayerIntegratedGradients on the input "
            f"embeddings), n_steps={IG_STEPS}, baseline: the embedding of token id 0; summed "
            "over the embedding and the answer tokens",
            build=_layer_ig,
        ),
        LLMMethod(
            name="random",
            signed=False,
            family="floor",
            stochastic=True,
            description="a seeded random ranking (the floor every method must beat)",
            build=_random,
        ),
    )
}
DEFAULT_LLM_METHODS = tuple(LLM_METHODS)


# ------------------------------------------------------------------------------ metrics
LogProbFn = Callable[[Sequence[Tensor]], Tensor]
"""Prompts (1-D ids each, BOS included) -> ``(N,)`` the target's total log-probability."""


def _answer_log_prob(model: nn.Module, ids: Tensor, n_prompt: int, target: Tensor) -> Tensor:
    """``(n,)`` float64 total log-probability of ``target`` after each prompt of
    ``n_prompt`` tokens (teacher forcing, KV cache off), from the model's logits alone: the
    metric does not run through the package it scores."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    at = out.logits[:, n_prompt - 1 : n_prompt - 1 + len(target)].to(torch.float64)
    lp = torch.log_softmax(at, dim=-1)
    picked = lp.gather(2, target.to(lp.device).view(1, -1, 1).expand(lp.shape[0], -1, 1))
    return picked[..., 0].sum(1)


def target_log_prob_fn(model: nn.Module, target: Tensor, batch_size: int = 64) -> LogProbFn:
    """:data:`LogProbFn` of ``model`` for the answer ``target`` (teacher forcing, no KV
    cache); prompts of equal length share a batch, so no padding is needed."""

    def log_prob(prompts: Sequence[Tensor]) -> Tensor:
        out = torch.empty(len(prompts), dtype=torch.float64)
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(i)
        for length, rows in by_length.items():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                ids = torch.stack([torch.cat([prompts[i], target]) for i in chunk])
                out[chunk] = _answer_log_prob(model, ids, length, target).cpu()
        return out

    return log_prob


def rationale_ks(n: int, max_k: int = MAX_K) -> range:
    """The sizes ``k`` the metrics average over: ``1 … min(max_k, n − 1)``."""
    if n < 2:
        raise ValueError(f"a prompt of {n} explained token(s) has no k to score (need 2)")
    return range(1, min(max_k, n - 1) + 1)


def faithfulness(
    scores: Tensor,
    prompt_ids: Tensor,
    features: Tensor,
    log_prob: LogProbFn,
    *,
    seed: int = 0,
    n_orders: int = N_TIE_ORDERS,
    max_k: int = MAX_K,
) -> dict[str, float]:
    """``drop_top_k`` and ``drop_keep_bottom_k`` of one explanation (higher is better).

    For each order of :func:`tie_orders` and each ``k`` of :func:`rationale_ks`: the drop
    ``log p(target | prompt) − log p(target | prompt')`` with ``prompt'`` the prompt
    without its top-k features (``drop_top_k``), or with only its k last-ranked features
    and the tokens that are not features, BOS among them (``drop_keep_bottom_k``). Each
    is averaged over the ks, then over the orders. Every distinct prompt is scored once,
    in one call of ``log_prob``.

    Args:
        scores: ``(n,)`` one score per feature (higher: more important).
        prompt_ids: ``(P,)`` the prompt's ids.
        features: ``(n,)`` the features' positions in ``prompt_ids``.
        log_prob: the target's total log-probability given prompts.
        seed: seeds the tie orders.
        n_orders: tie orders drawn when there are ties.
        max_k: the largest rationale.

    Returns:
        ``{"drop_top_k": …, "drop_keep_bottom_k": …}``.
    """
    n = len(features)
    if scores.shape != (n,):
        raise ValueError(f"{tuple(scores.shape)} scores for {n} features")
    ks = rationale_ks(n, max_k)
    prompts: dict[tuple[int, ...], int] = {}

    def row(drop: Tensor) -> int:
        keep = torch.ones(len(prompt_ids), dtype=torch.bool)
        keep[drop] = False
        return prompts.setdefault(tuple(prompt_ids[keep].tolist()), len(prompts))

    full = row(features[:0])
    plan = [
        (row(features[order[:k]]), row(features[order[: n - k]]))
        for order in tie_orders(
            scores, torch.zeros_like(scores, dtype=torch.bool), True, n_orders, seed
        )
        for k in ks
    ]
    lp = log_prob([torch.tensor(p, dtype=prompt_ids.dtype) for p in prompts])
    drops = (lp[full] - lp).tolist()
    return {
        "drop_top_k": math.fsum(drops[a] for a, _ in plan) / len(plan),
        "drop_keep_bottom_k": math.fsum(drops[b] for _, b in plan) / len(plan),
    }


# ---------------------------------------------------------------------------------- run
def rankings(name: str) -> list[tuple[str, bool]]:
    """``(label, signed)`` of the rankings stored for a method: its own, then ``|abs``."""
    signed = LLM_METHODS[name].signed
    return [(name, signed)] + ([(f"{name}|abs", False)] if signed else [])


def methods_meta(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``meta.json``'s methods: each method, and ``<name>|abs`` for a signed one."""
    out: dict[str, dict[str, Any]] = {}
    for name in methods:
        m = LLM_METHODS[name]
        info = {"signed": m.signed, "family": m.family, "stochastic": m.stochastic}
        out[name] = {**info, "description": m.description}
        if m.signed:
            out[f"{name}|abs"] = {**info, "signed": False, "description": f"{name}, by |score|"}
    return out


def _explanation(
    store: RunStore, name: str, explain: Explain, ex: LLMExample
) -> tuple[Tensor, float, dict[str, Any]]:
    """Scores, seconds and extra facts of ``name`` on ``ex``, from the store when done."""
    done = store.explanation(name, ex.id)
    if done is not None:
        return torch.tensor(done["scores"]), float(done["seconds"]), done
    start = time.perf_counter()
    scores, extra = explain(ex)
    seconds = time.perf_counter() - start
    scores = scores.detach().float().cpu()
    if scores.shape != ex.features.shape:
        raise RuntimeError(f"{name} gave {tuple(scores.shape)} scores for {ex.id}")
    store.add_explanation(
        {
            "method": name,
            "example": ex.id,
            "text": f"{ex.prompt} ⟶ {ex.continuation}",
            "prompt": ex.prompt,
            "continuation": ex.continuation,
            "tokens": ex.tokens,
            "scores": scores.tolist(),
            "seconds": seconds,
            **extra,
        }
    )
    return scores, seconds, extra


def score_example(
    store: RunStore, name: str, explain: Explain, ex: LLMExample, log_prob: LogProbFn
) -> None:
    """Explain ``ex`` with ``name`` and store every ranking's metrics (unless stored)."""
    labels = [(lb, s) for lb, s in rankings(name) if not store.has_results(lb, ex.id, "seconds")]
    if not labels:
        return
    scores, seconds, extra = _explanation(store, name, explain, ex)
    for label, signed in labels:
        ranked = scores if signed else scores.abs()
        rows = faithfulness(ranked, ex.prompt_ids, ex.features, log_prob, seed=ex.seed)
        rows["abstained"] = float(bool(ranked.max() == ranked.min()))
        if "converged" in extra:
            rows["converged"] = float(extra["converged"])
        rows["seconds"] = seconds  # last: its row marks the ranking as done
        store.add_results((label, ex.id, metric, value) for metric, value in rows.items())


def study_notes(skipped: dict[str, int], n_wanted: int, n_got: int) -> list[str]:
    """What ``meta.json`` says about the examples that were left out."""
    notes = [
        f"prompts: the first half of the words of SST-2 dev sentences 0, 1, …; skipped "
        f"{skipped['short']} sentences of fewer than {MIN_WORDS} words, "
        f"{skipped['one_token']} one-token prompts and {skipped['empty']} prompts whose "
        f"greedy continuation ({MAX_NEW_TOKENS} new tokens at most, cut at EOS) was empty",
        f"ties in a ranking: each metric is the mean over {N_TIE_ORDERS} seeded random "
        "orders of the tied tokens (never reading order)",
        CAPTUM_NOTE,
    ]
    if n_got < n_wanted:
        notes.append(f"only {n_got} usable prompts of {n_wanted} asked for")
    return notes


def _open_store(out_dir: Path | str, methods: Sequence[str], model_name: str) -> RunStore:
    """The run folder, after checking the method names and that it holds no other model."""
    unknown = [m for m in methods if m not in LLM_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(LLM_METHODS)}")
    store = RunStore(out_dir)
    if (store.run_dir / RunStore.META).is_file() and store.read_meta()["model"] != model_name:
        raise ValueError(f"{out_dir} holds a run of {store.read_meta()['model']}, not {model_name}")
    return store


def _explainers(
    model: nn.Module,
    tokenizer: Any,
    corpus: Sequence[str],
    methods: Sequence[str],
    store: RunStore,
) -> dict[str, Explain]:
    """Each method's explainer (σ_S, cached in the run folder, only when ``ours`` runs)."""
    from captum_perturb import next_token_state_std

    std = None
    if "ours" in methods:
        std = next_token_state_std(model, tokenizer, corpus, cache_dir=store.run_dir)
    ctx = LLMContext(model, tokenizer, std)
    return {m: LLM_METHODS[m].build(ctx) for m in methods}


def _study_meta(
    model_name: str,
    n_corpus: int,
    seed: int,
    command: str,
    methods: Sequence[str],
    skipped: dict[str, int],
    n: int,
    examples: Sequence[LLMExample],
) -> dict[str, Any]:
    """The run's ``meta.json``."""
    return {
        "model": model_name,
        "data": "SST-2 dev.tsv (prompts); σ_S: first-half prompts of "
        f"{n_corpus} train.tsv sentences",
        "task": "llm",
        "seed": seed,
        "date": datetime.date.today().isoformat(),
        "command": command,
        "methods": methods_meta(methods),
        "metrics": METRICS,
        "headline": list(HEADLINE["llm"]),
        "notes": study_notes(skipped, n, len(examples)),
        "reference": REFERENCE if REFERENCE in methods else None,
        "captum": CAPTUM_SETTINGS,
        "torch_threads": torch.get_num_threads(),
        "max_new_tokens": MAX_NEW_TOKENS,
        "examples": [ex.id for ex in examples],
    }


def _note_unconverged(
    store: RunStore, meta: dict[str, Any], methods: Sequence[str], n_examples: int
) -> None:
    """Add to ``meta.json`` how many of ``ours``'s estimates did not converge."""
    unconverged = [
        e["example"] for e in store.explanations() if e["method"] == "ours" and not e["converged"]
    ]
    if "ours" in methods:
        meta["notes"].append(f"ours: {len(unconverged)} of {n_examples} estimates unconverged")
        store.write_meta(meta)


def run_llm_study(
    model: nn.Module,
    tokenizer: Any,
    sentences: Sequence[str],
    corpus: Sequence[str],
    out_dir: Path | str,
    *,
    n: int,
    methods: Sequence[str] = DEFAULT_LLM_METHODS,
    seed: int = 0,
    model_name: str = "",
    command: str = "",
    max_examples: int = 10,
) -> RunStore:
    """Explain, score, store and report ``n`` prompts (resuming ``out_dir``).

    Args:
        model: a causal LM in eval mode; tokenizer: its tokenizer (with a BOS).
        sentences: the dev sentences the prompts come from.
        corpus: the prompts of σ_S (:func:`corpus_prompts` of train sentences).
        out_dir: the run folder.
        n: number of prompts.
        methods: names of :data:`LLM_METHODS`.
        seed: the run's seed (per-example seeds derive from it).
        model_name: ``meta.json``'s model; a run folder of another model is an error.
        command: what produced the run.
        max_examples: examples shown as heatmaps in the report.
    """
    from tqdm.auto import tqdm

    from comparisons.study.report import write_report

    store = _open_store(out_dir, methods, model_name)
    examples, skipped = build_examples(model, tokenizer, sentences, n, seed)
    explainers = _explainers(model, tokenizer, corpus, methods, store)
    meta = _study_meta(model_name, len(corpus), seed, command, methods, skipped, n, examples)
    store.write_meta(meta)
    for ex in tqdm(examples, desc="LLM study", unit="prompt"):
        log_prob = target_log_prob_fn(model, ex.target)
        for name, explain in explainers.items():
            score_example(store, name, explain, ex, log_prob)
    _note_unconverged(store, meta, methods, len(examples))
    write_report(store.run_dir, max_examples=max_examples, title=f"LLM attribution: {model_name}")
    return store
