r"""Explain a Hugging Face model in one call: :func:`explain`.

The model's kind picks the question (``docs/quickstart.rst``):

* a sequence classifier — how much of each word the predicted class's logit keeps
  (:class:`~captum_perturb.LayerPerturbationEntropyAttribution` on the word embeddings,
  the word's tokens one group), and the signed reading: does drowning the word lower
  the logit (evidence for the class) or raise it (against);
* a causal LM — how much of each prompt word the answer's next-token distributions keep
  (:class:`~captum_perturb.LLMPerturbationEntropyAttribution`, the words as Captum
  template segments);
* an encoder — how much of each word the last hidden state keeps, or, with
  ``layers="all"``, every layer (:func:`~captum_perturb.explain_layers`).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from typing_extensions import Unpack

from captum_perturb._utils.common import user_stacklevel
from captum_perturb._utils.model_state import evaluation_mode
from captum_perturb.functional.problem import AT_BOUND
from captum_perturb.hf.explanation import Explanation
from captum_perturb.hf.models import (
    HFModel,
    call_model,
    check_lengths,
    check_vocabulary,
    is_pipeline,
    resolve,
    side_args,
)
from captum_perturb.hf.signed import signed_reading
from captum_perturb.hf.state_std import (
    FALLBACK_NOTE,
    classifier_logit_std,
    encoder_state_std,
    layers_state_std,
    llm_state_std,
)
from captum_perturb.hf.words import Words, word_groups
from captum_perturb.options import EstimatorOptions, EstimatorSettings, resolve_options


def explain(
    model: Any,
    tokenizer: Any = None,
    texts: str | Sequence[str] | None = None,
    *,
    target: Any = None,
    layers: str | Sequence[int] | None = None,
    corpus: Iterable[str] | None = None,
    cache_dir: str | None = None,
    gen_args: dict[str, Any] | None = None,
    internal_batch_size: int | None = None,
    options: EstimatorOptions | None = None,
    **settings: Unpack[EstimatorSettings],
) -> Explanation:
    r"""Explain a Hugging Face model's prediction, answer or hidden state, word by word.

    Args:
        model: a ``...ForSequenceClassification``, a ``...ForCausalLM`` or an
            ``AutoModel``, or a ``transformers.pipeline`` holding one (then ``tokenizer``
            may be left out: ``explain(pipe, texts)``).
        tokenizer: the model's (fast) tokenizer.
        texts: one text or a list of texts.
        target: a classifier's class, by index or label name (one for all texts, or one
            per text; default: each text's predicted class); a causal LM's answer text
            (default: generated with ``gen_args``, Captum's 25 greedy tokens).
        layers: an encoder's layers: ``None`` (the last hidden state) or ``"all"`` / a
            list of layer numbers (the paper's layer-by-layer picture; 0 is the
            embedding output).
        corpus: texts of the model's domain (a list, or a ``datasets`` column) for σ_S,
            the explained output's spread over the corpus, which puts every text on one
            scale; estimated once and cached on disk by a hash of the weights, the target
            and the corpus. Without it: the packaged statistics where the model is the
            packaged all-MiniLM-L6-v2 encoder, else each text's own scale (the reference
            code's fallback), with a warning.
        cache_dir: where σ_S is cached (default ``~/.cache/captum_perturb/state_std`` or
            ``$CAPTUM_PERTURB_CACHE``).
        gen_args: ``model.generate`` arguments when a causal LM's answer is generated.
        internal_batch_size: perturbed copies per forward pass (speed and memory).
        options: the estimator's settings, :class:`~captum_perturb.EstimatorOptions`;
            ``**settings`` the same by keyword (``rate``, ``seed``, ``config``, …).

    Returns:
        An :class:`~captum_perturb.hf.Explanation`: shows itself in a notebook;
        ``to_html(path)``, ``plot()``, ``to_pandas()``.

    Raises:
        TypeError: an unsupported model class, a slow tokenizer, a missing tokenizer.
        ValueError: no text, a text longer than the model's context, an unknown label,
            a tokenizer that does not match the model's vocabulary.

    Example:
        A (tiny, random) sentiment classifier's prediction, word by word:

        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> from captum_perturb import FixedPointConfig, explain
        >>> from captum_perturb.hf.testing import word_tokenizer
        >>> tok = word_tokenizer(["a", "gorgeous", "witty", "movie"])
        >>> _ = torch.manual_seed(0)
        >>> config = BertConfig(
        ...     vocab_size=len(tok),
        ...     hidden_size=16,
        ...     num_hidden_layers=2,
        ...     num_attention_heads=2,
        ...     intermediate_size=32,
        ... )
        >>> model = BertForSequenceClassification(config)
        >>> exp = explain(model, tok, "a gorgeous witty movie", config=FixedPointConfig(max_iter=4))
        >>> exp.words
        [['a', 'gorgeous', 'witty', 'movie']]
        >>> list(exp.to_pandas().columns)  # doctest: +NORMALIZE_WHITESPACE
        ['example', 'word', 'word_index', 'score', 'std_error', 'saturated', 'direction',
         'signed_score', 'target', 'converged']
    """
    if texts is None and is_pipeline(model) and isinstance(tokenizer, (str, list, tuple)):
        texts, tokenizer = tokenizer, None  # explain(pipe, texts)
    hf = resolve(model, tokenizer)
    text_list = _texts(texts)
    check_vocabulary(hf)
    how = _How(
        resolve_options(options, settings, "explain"),
        None if corpus is None else _texts(corpus, "corpus"),
        internal_batch_size,
        cache_dir,
    )
    with evaluation_mode([hf.model]):
        if hf.kind == "classifier":
            return _classifier(hf, text_list, target, how)
        if hf.kind == "causal_lm":
            return _causal_lm(hf, text_list, target, gen_args, how)
        if target is not None:
            raise ValueError("an encoder's explanation has no target: leave target out")
        if layers is not None:
            return _layers(hf, text_list, layers, how)
        return _encoder(hf, text_list, how)


class _How(NamedTuple):
    """The settings every kind of explanation takes."""

    opts: EstimatorOptions
    corpus: list[str] | None
    internal_batch_size: int | None
    cache_dir: str | None


def _texts(texts: Any, what: str = "texts") -> list[str]:
    """``texts`` as a non-empty list of strings."""
    if isinstance(texts, str):
        return [texts]
    if texts is None:
        raise ValueError(f"pass {what}: a string or a list of strings")
    out = list(texts)
    if not out:
        raise ValueError(f"{what} is empty: pass at least one text")
    bad = [i for i, t in enumerate(out) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"{what}[{bad[0]}] is not a non-empty string: {out[bad[0]]!r}")
    return out


def _encode(hf: HFModel, texts: list[str]) -> tuple[dict[str, Tensor], Words]:
    """The padded encoding on the model's device and the whole-word groups."""
    enc = hf.tokenizer(texts, return_tensors="pt", padding=True)
    check_lengths(hf, [int(n) for n in enc["attention_mask"].sum(1)])
    words = word_groups(enc, texts)
    device = next(hf.model.parameters()).device
    tensors = {k: v.to(device) for k, v in enc.items() if isinstance(v, Tensor)}
    if int(tensors["input_ids"].max()) >= hf.embeddings.num_embeddings:
        raise ValueError(
            "the tokenizer produced ids the model has no embedding for: they do not belong "
            "together; load both from the same name or folder"
        )
    return tensors, words


def _per_word(result: Any, words: Words) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per text, ``(W,)`` nats per word, their standard errors and whether the word sits at
    σ_max, from a Captum class's result whose groups are words (``group_ids`` = the word
    index)."""
    from captum_perturb.functional.diagnostics import score_of

    est = result.estimate
    size = est.group_size.float()
    table = result.group_ids.cpu()
    valid = table >= 0
    rows = valid.nonzero()[:, 0]
    per_group = {
        "nats": (score_of(est, result.score).nan_to_num(0.0) * size).float().cpu(),
        "se": (result.std_error.nan_to_num(0.0) * size).float().cpu(),
        "bound": result.saturated.cpu(),
    }
    out = []
    for values in per_group.values():
        grid = torch.zeros(table.shape[0], max(len(w) for w in words.words), dtype=values.dtype)
        grid[rows, table[valid]] = values[valid]
        out.append([grid[i, : len(w)] for i, w in enumerate(words.words)])
    return out[0], out[1], out[2]


def _explain_quietly(run: Any) -> Any:
    """Run a class's ``explain`` with its own fallback-σ_S warning silenced: the one-liner
    says it in its own words (:data:`~captum_perturb.hf.state_std.FALLBACK_NOTE`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*No state_std.*")
        warnings.filterwarnings("ignore", message=r"(?s).*no state_std for layers.*")
        return run()


def _warn_fallback(normaliser: str) -> None:
    if normaliser == "mean square fallback":
        warnings.warn(FALLBACK_NOTE, UserWarning, stacklevel=user_stacklevel())


def _classifier(
    hf: HFModel,
    texts: list[str],
    target: Any,
    how: _How,
) -> Explanation:
    enc, words = _encode(hf, texts)
    side = side_args(enc)
    with torch.no_grad():
        logits = call_model(hf.model, enc["input_ids"], *side).logits.float()
    targets = _class_targets(hf, target, logits)
    scale, normaliser = classifier_logit_std(hf, how.corpus, how.cache_dir)

    def forward(ids: Tensor, *args: Tensor) -> Tensor:
        # the logits in units of their spread over the corpus: σ_S folded into the state,
        # so that every text's own target class is on its own class's scale
        out = call_model(hf.model, ids, *args).logits
        return out / scale.to(out) if scale is not None else out

    state_std = None if scale is None else torch.ones(())
    result = _explain_words(hf, forward, enc, words, targets, state_std, how)
    _warn_fallback(normaliser)
    nats, se, bound = _per_word(result, words)
    direction = signed_reading(hf, enc, words, targets, how.opts.sigma_max, how.opts.seed)
    probs = logits.softmax(-1)[torch.arange(len(texts)), torch.tensor(targets)].tolist()
    labels = _label_names(hf)
    return Explanation(
        kind="classifier",
        texts=texts,
        words=words.words,
        scores=nats,
        std_errors=se,
        saturated=bound,
        targets=[labels[t] for t in targets],
        converged=result.converged.cpu().tolist(),
        direction=[direction[i, : len(w)] for i, w in enumerate(words.words)],
        probabilities=[float(p) for p in probs],
        normaliser=normaliser,
        results=[result],
    )


def _explain_words(
    hf: HFModel,
    forward: Any,
    enc: dict[str, Tensor],
    words: Words,
    target: Any,
    state_std: Tensor | None,
    how: _How,
) -> Any:
    """:class:`~captum_perturb.LayerPerturbationEntropyAttribution` on the word
    embeddings, one group per word; special tokens and padding are left noise-free and
    out of the loss."""
    from captum_perturb.attr.layer_perturbation_entropy import LayerPerturbationEntropyAttribution

    attr = LayerPerturbationEntropyAttribution(forward, hf.embeddings)
    perturbed = (words.groups >= 0).to(enc["input_ids"].device)
    return _explain_quietly(
        functools.partial(
            attr.explain,
            enc["input_ids"],
            target,
            side_args(enc),
            words.groups.clamp_min(0).unsqueeze(-1).to(perturbed.device),
            attention_mask=perturbed.long(),
            internal_batch_size=how.internal_batch_size,
            options=how.opts,
            state_std=state_std,
        )
    )


def _label_names(hf: HFModel) -> dict[int, str]:
    id2label = getattr(hf.model.config, "id2label", None) or {}
    n = int(getattr(hf.model.config, "num_labels", len(id2label)) or len(id2label))
    return {i: str(id2label.get(i, f"LABEL_{i}")) for i in range(n)}


def _class_targets(hf: HFModel, target: Any, logits: Tensor) -> list[int]:
    """Each text's class: the predicted one, or ``target`` by index or label name.

    Raises:
        ValueError: an index out of range, an unknown label, a list of another length.
    """
    n, n_classes = logits.shape
    if target is None:
        return logits.argmax(-1).tolist()
    given = list(target) if isinstance(target, (list, tuple)) else [target] * n
    if len(given) != n:
        raise ValueError(f"target has {len(given)} entries for {n} texts: one per text, or one")
    labels = _label_names(hf)
    by_name = {name: i for i, name in labels.items()}
    out = []
    for t in given:
        if isinstance(t, str):
            if t not in by_name:
                raise ValueError(f"target {t!r} is not a label of this model: {sorted(by_name)}")
            out.append(by_name[t])
        elif isinstance(t, int) and not isinstance(t, bool) and 0 <= t < n_classes:
            out.append(t)
        else:
            raise ValueError(
                f"target {t!r} is not a class of this model: an index 0..{n_classes - 1} or "
                f"a label name {sorted(by_name)}"
            )
    return out


def _causal_lm(
    hf: HFModel,
    texts: list[str],
    target: Any,
    gen_args: dict[str, Any] | None,
    how: _How,
) -> Explanation:
    from captum.attr import TextTemplateInput

    from captum_perturb.llm.attribution import LLMPerturbationEntropyAttribution

    answers = list(target) if isinstance(target, (list, tuple)) else [target] * len(texts)
    if len(answers) != len(texts):
        raise ValueError(f"target has {len(answers)} answers for {len(texts)} texts")
    std, normaliser = llm_state_std(hf, how.corpus, how.cache_dir)
    llm = LLMPerturbationEntropyAttribution(hf.model, hf.tokenizer, state_std=std)
    keys = ("words", "nats", "se", "bound", "answer", "prob", "ok", "res")
    out: dict[str, list[Any]] = {k: [] for k in keys}
    for i, text in enumerate(texts):
        values = _word_segments(text)
        answer = answers[i] if answers[i] is not None else _generate(hf, text, gen_args)
        n_answer = len(hf.tokenizer(answer, add_special_tokens=False)["input_ids"])
        check_lengths(hf, [len(hf.tokenizer(text)["input_ids"])], extra=n_answer)
        inp = TextTemplateInput("{}" * len(values), values)
        res = _explain_quietly(
            functools.partial(
                llm.attribute, inp, target=answer, per_token=False,
                internal_batch_size=how.internal_batch_size, options=how.opts,
            )
        )  # fmt: skip
        out["words"].append([v.strip() for v in values])
        out["nats"].append(res.seq_attr.float())
        out["se"].append(res.seq_std_error.float())
        out["bound"].append(res.saturated[0].bool())
        out["answer"].append(answer)
        out["prob"].append(float(res.output_probs.prod()) if res.output_probs is not None else None)
        out["ok"].append(bool(res.converged.all()))
        out["res"].append(res)
    _warn_fallback(normaliser)
    return Explanation(
        kind="causal_lm",
        texts=texts,
        words=out["words"],
        scores=out["nats"],
        std_errors=out["se"],
        saturated=out["bound"],
        targets=out["answer"],
        converged=out["ok"],
        probabilities=out["prob"],
        normaliser=normaliser,
        results=out["res"],
    )


def _word_segments(text: str) -> list[str]:
    """The text cut before each word (whitespace-separated), each piece with the spaces
    before it: concatenated they give the text back."""
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    if not starts:
        raise ValueError(f"text {text!r} has no word to explain")
    cuts = [0, *starts[1:], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(cuts)]


def _generate(hf: HFModel, text: str, gen_args: dict[str, Any] | None) -> str:
    """The model's greedy answer to ``text`` (Captum's default: 25 new tokens)."""
    args = {"max_new_tokens": 25, "do_sample": False, **(gen_args or {})}
    device = next(hf.model.parameters()).device
    enc = hf.tokenizer(text, return_tensors="pt").to(device)
    pad = hf.tokenizer.pad_token_id
    pad = hf.tokenizer.eos_token_id if pad is None else pad
    generate: Any = hf.model.generate
    with torch.no_grad():
        ids = generate(**enc, pad_token_id=pad, **args)
    answer = hf.tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    if not answer.strip():
        raise ValueError(f"the model's answer to {text!r} is empty: pass target='...'")
    return str(answer)


def _encoder(
    hf: HFModel,
    texts: list[str],
    how: _How,
) -> Explanation:
    enc, words = _encode(hf, texts)
    std, normaliser = encoder_state_std(hf, how.corpus, how.cache_dir)

    def forward(ids: Tensor, *args: Tensor) -> Tensor:
        return call_model(hf.model, ids, *args).last_hidden_state

    result = _explain_words(hf, forward, enc, words, None, std, how)
    _warn_fallback(normaliser)
    nats, se, bound = _per_word(result, words)
    return Explanation(
        kind="encoder",
        texts=texts,
        words=words.words,
        scores=nats,
        std_errors=se,
        saturated=bound,
        targets=["the last hidden state"] * len(texts),
        converged=result.converged.cpu().tolist(),
        normaliser=normaliser,
        results=[result],
    )


def _layers(
    hf: HFModel,
    texts: list[str],
    layers: str | Sequence[int],
    how: _How,
) -> Explanation:
    from captum_perturb.layers.explain import explain_layers

    if isinstance(layers, str) and layers != "all":
        raise ValueError(f"layers must be 'all' or a list of layer numbers, got {layers!r}")
    chosen = None if isinstance(layers, str) else list(layers)
    enc, words = _encode(hf, texts)
    std, normaliser = layers_state_std(hf, how.corpus, how.cache_dir)
    special = (words.groups < 0) & enc["attention_mask"].bool().cpu()
    encoding = {**enc, "special_tokens_mask": special.to(enc["input_ids"].device)}
    info = _explain_quietly(
        lambda: explain_layers(
            hf.model, encoding, chosen, special_tokens="exclude", tokenizer=hf.tokenizer,
            internal_batch_size=how.internal_batch_size, options=how.opts, state_std=std,
        )
    )  # fmt: skip
    normaliser = normaliser if std is not None else next(iter(info.normaliser.values()))
    _warn_fallback(normaliser)
    scores, errors, bounds = [], [], []
    # (N, L, T) at σ_max by the estimator's rule; NaN (never perturbed): False
    at_bound = info.sigma.log() >= math.log(info.sigma_max) - AT_BOUND
    for i, w in enumerate(words.words):
        one_hot = torch.nn.functional.one_hot(words.groups[i].clamp_min(0), len(w)).float()
        one_hot = one_hot * (words.groups[i] >= 0).unsqueeze(-1)
        nats = info.nats_kept[i].nan_to_num(0.0).float() @ one_hot
        var = info.std_error[i].nan_to_num(0.0).float().square() @ one_hot
        scores.append(nats)
        errors.append(var.sqrt())
        # a word is at the bound when every token of it is
        n_tokens = one_hot.sum(0)
        bounds.append((at_bound[i].float() @ one_hot == n_tokens) & (n_tokens > 0))
    return Explanation(
        kind="layers",
        texts=texts,
        words=words.words,
        scores=scores,
        std_errors=errors,
        saturated=bounds,
        targets=["every layer's hidden states"] * len(texts),
        converged=info.converged.all(1).tolist(),
        layers=list(info.layers),
        normaliser=normaliser,
        results=[info],
    )
