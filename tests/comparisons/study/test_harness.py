"""The comparison harness end to end on a tiny random BERT (``comparisons/``).

A two-layer, 32-wide BERT built from a config with a fixed seed, and a word-level
tokenizer written into a temporary folder, stand in for a real model, so that every
test is offline, deterministic and takes seconds. Covered:

* the method registry (:mod:`comparisons.study.methods`): names, errors, adding a method;
* one contract for every registered method: output shape, finiteness, seeded
  reproducibility, global RNGs, the model's weights, mode and hooks left alone;
* :func:`comparisons.study.run.run_study` on a classifier (results, meta, curves, report,
  sanity check, resuming) and on hidden states (pooled and a layer's token states);
* the command line (``python -m comparisons``).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# `comparisons` is a folder of the repository, importable through pytest's `pythonpath = .`.

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("IPython")

from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizer,
)

from comparisons.__main__ import main
from comparisons.models.text_model import Example, TextModel
from comparisons.study.methods import (
    DEFAULT_METHODS,
    METHODS,
    ExampleInputs,
    MethodContext,
    NotApplicableError,
    get_method,
    register,
    token_scores,
)
from comparisons.study.run import BETTER, Study, StudyConfig, run_study
from comparisons.study.store import RunStore

# Captum warns about gradient requirements and DeepLift's hooks on every call.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = (
    "the", "a", "movie", "film", "story", "plot", "acting", "it", "is", "was",
    "not", "very", "and", "but", "of", "to", "good", "bad", "great", "awful",
    "funny", "dull", "charming", "boring", "best", "worst", "love", "hate", "fun", "slow",
)  # fmt: skip
SENTENCES = (
    ("the movie was not very good", 0),
    ("a great story and fun acting", 1),
    ("it was dull but charming", 1),
    ("the worst plot of the film", 0),
    ("love the acting but hate the story", 1),
    ("a slow and boring movie", 0),
)
CORPUS = ["the film is dull", "a great story", "bad plot but good acting"]
PIPELINE_METHODS = ("ours", "integrated-gradients", "saliency", "leave-one-out", "lime", "random")
STAGES = [("head", 0), ("layer 2", 1), ("layer 1", 2), ("embeddings", 3)]

_REMOVAL_METRICS = {
    f"aopc_{kind}/{bins}/{remover}"
    for kind in ("comprehensiveness", "sufficiency")
    for bins in ("eraser", "ferret")
    for remover in ("mask", "delete")
} | {"tau_loo/mask", "tau_loo/delete"}
CLASSIFIER_METRICS = _REMOVAL_METRICS | {
    "deletion_area/mask",
    "insertion_area/mask",
    "seconds",
    "abstained",
}
CAPTUM_METRICS = {"infidelity", "sensitivity_max"}

RUNNABLE = sorted(n for n in METHODS if n != "ours-reference")  # the reference takes ~20 s
STOCHASTIC = [n for n in RUNNABLE if METHODS[n].stochastic]


# ---------------------------------------------------------------------------- fixtures


def _config() -> BertConfig:
    return BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        num_labels=2,
        max_position_embeddings=64,
    )


def _build(cls: Any, seed: int) -> Any:
    """``cls(config)`` in eval mode, initialised from ``seed`` without touching the
    caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(_config()).eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizer:
    folder = tmp_path_factory.mktemp("vocab")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, *WORDS]) + "\n", encoding="utf-8")
    return BertTokenizer(str(vocab))


@pytest.fixture(scope="module")
def classifier(tokenizer: BertTokenizer) -> TextModel:
    return TextModel(_build(BertForSequenceClassification, seed=0), tokenizer, "probs")


@pytest.fixture(scope="module")
def example(classifier: TextModel) -> Example:
    return classifier.encode("the movie was not very good but the acting is great", "ex-0", 1)


def _model_snapshot(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": sum(
            len(m._forward_hooks)
            + len(m._forward_pre_hooks)
            + len(m._backward_hooks)
            + len(m._backward_pre_hooks)
            for m in model.modules()
        ),
    }


def _assert_model_unchanged(model: torch.nn.Module, before: dict[str, Any]) -> None:
    after = _model_snapshot(model)
    assert after["weights"].keys() == before["weights"].keys()
    for key, value in before["weights"].items():
        torch.testing.assert_close(after["weights"][key], value, rtol=0, atol=0, msg=key)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] == 0


def _rng_states() -> tuple[torch.Tensor, Any, Any]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


# ---------------------------------------------------------------------------- registry


def test_every_default_method_is_registered() -> None:
    missing = [name for name in DEFAULT_METHODS if name not in METHODS]
    assert not missing
    assert len(set(DEFAULT_METHODS)) == len(DEFAULT_METHODS)
    for name, spec in METHODS.items():
        assert spec.name == name
        assert spec.family in ("ours", "gradient", "perturbation", "floor")
        assert spec.description


def test_get_method_lists_the_valid_names() -> None:
    assert get_method("saliency") is METHODS["saliency"]
    with pytest.raises(ValueError, match="unknown method 'nope'") as info:
        get_method("nope")
    message = str(info.value)
    for name in METHODS:
        assert name in message


def test_registering_a_taken_name_raises_and_keeps_the_original() -> None:
    original = METHODS["saliency"]
    with pytest.raises(ValueError, match="already registered"):
        register("saliency", signed=False, family="gradient", description="a copy")(
            original.factory
        )
    assert METHODS["saliency"] is original


def test_adding_a_method_is_one_register_call(
    tmp_path: Path, classifier: TextModel, example: Example
) -> None:
    name = "toy-embedding-sum"
    assert name not in METHODS
    try:

        @register(name, signed=True, family="floor", description="the embeddings themselves")
        def _toy(ctx: MethodContext) -> Any:
            return lambda x: x.embeds.clone()

        assert get_method(name).factory is _toy
        config = StudyConfig((name,), captum_examples=0, sanity_examples=0)
        store = run_study(classifier, [example], tmp_path, config, report=False)
        assert {r["method"] for r in store.results()} == {name, f"{name}|abs"}
        (explanation,) = store.explanations()
        expected = token_scores(classifier.embed(example.input_ids.unsqueeze(0)))
        torch.testing.assert_close(torch.tensor(explanation["scores"]), expected)
    finally:
        METHODS.pop(name, None)
    assert name not in METHODS


def test_a_signed_method_with_another_methods_magnitudes_has_no_abs_ranking(
    tmp_path: Path, classifier: TextModel, example: Example
) -> None:
    name = "toy-signed-copy"
    try:

        @register(
            name,
            signed=True,
            family="floor",
            description="the embeddings' signs times saliency",
            magnitudes_of="saliency",
        )
        def _toy(ctx: MethodContext) -> Any:
            return lambda x: x.embeds.clone()

        config = StudyConfig((name,), captum_examples=0, sanity_examples=0)
        store = run_study(classifier, [example], tmp_path, config, report=False)
        assert {r["method"] for r in store.results()} == {name}  # its |abs would be a copy
        methods = store.read_meta()["methods"]
        assert list(methods) == [name] and methods[name]["magnitudes_of"] == "saliency"
    finally:
        METHODS.pop(name, None)
    assert METHODS["ours-signed"].magnitudes_of == "ours"


def test_ours_reference_is_registered_and_builds(classifier: TextModel) -> None:
    spec = get_method("ours-reference")
    assert (spec.family, spec.signed, spec.stochastic) == ("ours", False, True)
    assert callable(spec.factory(MethodContext(classifier, CORPUS, seed=0)))


@pytest.mark.parametrize("name", ["ours-prob", "ours-hidden"])
def test_classifier_only_variants_are_not_applicable_to_a_state(
    name: str, tmp_path: Path, tokenizer: BertTokenizer
) -> None:
    tm = TextModel(_build(BertModel, seed=3), tokenizer, "pooled")
    with pytest.raises(NotApplicableError):
        METHODS[name].factory(MethodContext(tm, [], seed=0))
    study = Study(tm, [], tmp_path, StudyConfig((name,)))
    assert study.attribute_fn(name) is None
    assert any(note.startswith(f"{name}: not applicable") for note in study.notes)


# ---------------------------------------------------------------------------- methods


def test_token_scores_sum_over_the_embedding_dim() -> None:
    attributions = torch.arange(24.0).view(1, 4, 6).requires_grad_()
    scores = token_scores(attributions)
    torch.testing.assert_close(scores, torch.tensor([15.0, 51.0, 87.0, 123.0]))
    assert scores.dtype == torch.float32
    assert not scores.requires_grad


def test_inputs_baseline_keeps_special_tokens(classifier: TextModel, example: Example) -> None:
    x = MethodContext(classifier, [], seed=0).inputs(example)
    special = example.special
    assert example.tokens[0] == "[CLS]" and example.tokens[-1] == "[SEP]"
    assert special.tolist() == [True] + [False] * (len(special) - 2) + [True]
    assert x.embeds.shape == x.baseline.shape == (1, len(special), 32)
    assert torch.equal(x.baseline[0, special], x.embeds[0, special])
    # the embedding module works position by position: elsewhere, [PAD] at that position
    all_pad = torch.full_like(example.input_ids, classifier.tokenizer.pad_token_id)
    pad = classifier.embed(all_pad.unsqueeze(0))
    torch.testing.assert_close(x.baseline[0, ~special], pad[0, ~special])
    assert not torch.allclose(x.baseline[0, ~special], x.embeds[0, ~special])
    assert torch.equal(x.mask, torch.ones(1, len(special), dtype=torch.long))
    with torch.no_grad():
        probs = x.forward(x.embeds, x.mask)
    assert x.target == int(probs.argmax(-1))


@pytest.mark.parametrize("name", RUNNABLE)
def test_method_contract(name: str, classifier: TextModel, example: Example) -> None:
    ctx = MethodContext(classifier, CORPUS, seed=0)
    x = ctx.inputs(example)
    before = _model_snapshot(classifier.model)
    torch_rng = torch.get_rng_state()
    attributions = METHODS[name].factory(ctx)(x)
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert isinstance(attributions, torch.Tensor)
    assert attributions.shape == (1, len(example.input_ids), 32)
    assert attributions.dtype == torch.float32
    assert torch.isfinite(attributions).all()
    _assert_model_unchanged(classifier.model, before)
    scores = token_scores(attributions)
    assert scores.shape == (len(example.input_ids),)
    torch.testing.assert_close(scores, attributions.detach().sum(-1)[0])


@pytest.mark.parametrize("name", RUNNABLE)
def test_method_leaves_numpy_and_python_rngs_alone(
    name: str, classifier: TextModel, example: Example
) -> None:
    ctx = MethodContext(classifier, CORPUS, seed=0)
    x = ctx.inputs(example)
    fn = METHODS[name].factory(ctx)
    _, np_before, py_before = _rng_states()
    fn(x)
    _, np_after, py_after = _rng_states()
    assert np_after[0] == np_before[0]
    np.testing.assert_array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]
    assert py_after == py_before


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_method_is_reproducible_per_example_seed(
    name: str, classifier: TextModel, example: Example
) -> None:
    ctx = MethodContext(classifier, CORPUS, seed=0)
    x = ctx.inputs(example)
    fn = METHODS[name].factory(ctx)
    first, second = fn(x), fn(x)
    fresh_ctx = MethodContext(classifier, CORPUS, seed=0)
    fresh = METHODS[name].factory(fresh_ctx)(fresh_ctx.inputs(example))
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(fresh, first, rtol=0, atol=0)
    other = fn(dataclasses.replace(x, seed=x.seed + 1))
    assert not torch.equal(other, first), "the example seed is not used"


def test_example_seed_depends_on_the_run_seed_and_the_id_only(classifier: TextModel) -> None:
    def seed(run_seed: int, example_id: str) -> int:
        return MethodContext(classifier, [], seed=run_seed).example_seed(example_id)

    assert seed(0, "a") == seed(0, "a")
    assert seed(0, "a") != seed(0, "b")
    assert seed(0, "a") != seed(1, "a")


def test_study_scores_do_not_depend_on_example_order(tmp_path: Path, classifier: TextModel) -> None:
    examples = [classifier.encode(s, f"dev-{i:04d}", y) for i, (s, y) in enumerate(SENTENCES[:2])]
    config = StudyConfig(("ours", "lime", "random"), captum_examples=0, sanity_examples=0)
    forward = run_study(classifier, examples, tmp_path / "a", config, corpus=CORPUS, report=False)
    backward = run_study(
        classifier, examples[::-1], tmp_path / "b", config, corpus=CORPUS, report=False
    )

    def scores(store: RunStore) -> dict[tuple[str, str], list[float]]:
        return {(e["method"], e["example"]): e["scores"] for e in store.explanations()}

    assert len(scores(forward)) == 6
    assert scores(forward) == scores(backward)


# ---------------------------------------------------------------------------- the pipeline


@dataclass
class PipelineRun:
    tm: TextModel
    examples: list[Example]
    out: Path
    config: StudyConfig
    weights_before: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tokenizer: BertTokenizer) -> PipelineRun:
    tm = TextModel(
        _build(BertForSequenceClassification, seed=1), tokenizer, "probs", name="tiny-bert"
    )
    examples = [tm.encode(s, f"dev-{i:04d}", y) for i, (s, y) in enumerate(SENTENCES[:3])]
    weights = {k: v.detach().clone() for k, v in tm.model.state_dict().items()}
    out = tmp_path_factory.mktemp("pipeline") / "run"
    config = StudyConfig(PIPELINE_METHODS, captum_examples=1, sanity_examples=1)
    run_study(tm, examples, out, config, corpus=CORPUS, data="tiny.tsv", command="pytest")
    return PipelineRun(tm, examples, out, config, weights)


def _labels(methods: tuple[str, ...]) -> list[str]:
    """Each method, followed by its ``|abs`` ranking when it is signed."""
    return [m for name in methods for m in [name, f"{name}|abs"][: 1 + METHODS[name].signed]]


def _copy_run(pipeline: PipelineRun, to: Path) -> Path:
    out = to / "run"
    shutil.copytree(pipeline.out, out)
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_pipeline_results_cover_methods_examples_and_metrics(pipeline: PipelineRun) -> None:
    rows = RunStore(pipeline.out).results()
    keys = [(r["method"], r["example"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), "a result was written twice"
    found: dict[tuple[str, str], set[str]] = {}
    for method, ex, metric in keys:
        found.setdefault((method, ex), set()).add(metric)
    labels = _labels(PIPELINE_METHODS)
    assert {"integrated-gradients|abs", "leave-one-out|abs", "lime|abs"} <= set(labels)
    assert "ours|abs" not in labels and "saliency|abs" not in labels
    expected = {}
    for label in labels:
        for i, ex in enumerate(pipeline.examples):
            captum = CAPTUM_METRICS if i < 1 and "|" not in label else set()
            # curves are drawn for a method's own ranking only
            curves = {"deletion_area/mask", "insertion_area/mask"} if "|" in label else set()
            expected[(label, ex.id)] = (CLASSIFIER_METRICS - curves) | captum
    assert found == expected
    assert all(np.isfinite(r["value"]) for r in rows)
    seconds = [r["value"] for r in rows if r["metric"] == "seconds"]
    assert all(s >= 0 for s in seconds)


def test_pipeline_stores_explanations_and_curves(pipeline: PipelineRun) -> None:
    store = RunStore(pipeline.out)
    explanations = store.explanations()
    assert {(e["method"], e["example"]) for e in explanations} == {
        (m, ex.id) for m in PIPELINE_METHODS for ex in pipeline.examples
    }
    assert len(explanations) == len(PIPELINE_METHODS) * len(pipeline.examples)
    by_id = {ex.id: ex for ex in pipeline.examples}
    for e in explanations:
        ex = by_id[e["example"]]
        assert e["tokens"] == ex.tokens and e["text"] == ex.text and e["label"] == ex.label
        assert len(e["scores"]) == len(ex.tokens)
        assert 0.0 <= e["prob"] <= 1.0
    curves = {(c["method"], c["example"], c["curve"]) for c in store.curves()}
    assert curves == {
        (label, ex.id, kind)
        for label in PIPELINE_METHODS  # curves: each method's own ranking only
        for ex in pipeline.examples
        for kind in ("deletion/mask", "insertion/mask")
    }


def test_pipeline_meta_describes_methods_and_metrics(pipeline: PipelineRun) -> None:
    meta = RunStore(pipeline.out).read_meta()
    assert (meta["model"], meta["data"], meta["task"], meta["command"]) == (
        "tiny-bert",
        "tiny.tsv",
        "classifier",
        "pytest",
    )
    abs_rankings = [f"{m}|abs" for m in PIPELINE_METHODS if METHODS[m].signed]
    assert list(meta["methods"]) == [*PIPELINE_METHODS, *abs_rankings]
    for name, info in meta["methods"].items():
        base = name.removesuffix("|abs")
        assert info["signed"] == (METHODS[base].signed and name == base)
        assert info["family"] == METHODS[base].family
    metrics = {r["metric"] for r in RunStore(pipeline.out).results()}
    assert set(meta["metrics"]) == metrics
    for name, info in meta["metrics"].items():
        assert info["better"] == BETTER[name.split("/")[0]]
        assert info["description"]
    assert meta["metrics"]["aopc_sufficiency/eraser/mask"]["better"] == "lower"
    assert meta["metrics"]["aopc_comprehensiveness/eraser/mask"]["better"] == "higher"


def _example_table(page: str, example_id: str) -> str:
    match = re.search(
        rf"<h3>{re.escape(html.escape(example_id))}</h3><p>.*?</p>"
        r"(?:<div class='captum'>)?(<table.*?</table>)",
        page,
        re.S,
    )
    assert match, f"no visualization table for {example_id}"
    return match.group(1)


def test_pipeline_report_is_self_contained_with_a_row_per_method(pipeline: PipelineRun) -> None:
    page = (pipeline.out / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # curves, faithfulness against seconds, sanity check
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"https?://", page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    for ex in pipeline.examples:
        table = _example_table(page, ex.id)
        labels = re.findall(r"<b>([^<]*)</b></text></td><td><text[^>]*><b>[-0-9.]+</b>", table)
        assert labels == list(PIPELINE_METHODS), ex.id


def test_pipeline_report_does_not_call_abs_rankings_unexplained(pipeline: PipelineRun) -> None:
    page = (pipeline.out / "report.html").read_text(encoding="utf-8")
    assert "Not explained" not in page


def test_pipeline_sanity_check_covers_every_method_and_stage(pipeline: PipelineRun) -> None:
    rows = RunStore(pipeline.out).sanity()
    first = pipeline.examples[0].id
    assert {r["example"] for r in rows} == {first}
    got = sorted((r["method"], r["stage"], r["stage_index"]) for r in rows)
    assert got == sorted((m, s, i) for m in PIPELINE_METHODS for s, i in STAGES)
    for r in rows:
        assert -1.0 <= r["spearman"] <= 1.0
        if r["method"] == "random":  # the floor does not depend on the weights
            assert r["spearman"] == pytest.approx(1.0)


def test_pipeline_sanity_embeddings_stage_changes_the_explanations(pipeline: PipelineRun) -> None:
    rho = {(r["method"], r["stage"]): r["spearman"] for r in RunStore(pipeline.out).sanity()}
    deterministic = [m for m in PIPELINE_METHODS if not METHODS[m].stochastic]
    assert len(deterministic) == 3
    assert any(rho[(m, "embeddings")] != rho[(m, "layer 1")] for m in deterministic)


def test_pipeline_leaves_the_model_as_it_was(pipeline: PipelineRun) -> None:
    state = pipeline.tm.model.state_dict()
    assert state.keys() == pipeline.weights_before.keys()
    for key, value in pipeline.weights_before.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert not any(m.training for m in pipeline.tm.model.modules())


def _raise_if_called(ctx: MethodContext) -> Any:
    def attribute(x: ExampleInputs) -> torch.Tensor:
        raise AssertionError("a finished explanation was recomputed")

    return attribute


def test_pipeline_resumes_without_recomputing(
    pipeline: PipelineRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _copy_run(pipeline, tmp_path)
    files = ("explanations.jsonl", "results.csv", "curves.jsonl", "sanity.jsonl")
    before = {name: (out / name).read_bytes() for name in files}
    (out / "report.html").unlink()
    with monkeypatch.context() as patch:
        for name in PIPELINE_METHODS:
            spec = dataclasses.replace(METHODS[name], factory=_raise_if_called)
            patch.setitem(METHODS, name, spec)
        run_study(pipeline.tm, pipeline.examples, out, pipeline.config, corpus=CORPUS)
    assert {name: (out / name).read_bytes() for name in files} == before
    assert (out / "report.html").is_file()

    # one more example: only it is explained and scored
    extra = pipeline.tm.encode(SENTENCES[3][0], "dev-0003", SENTENCES[3][1])
    n_explanations = len(_lines(out / "explanations.jsonl"))
    run_study(
        pipeline.tm, [*pipeline.examples, extra], out, pipeline.config, corpus=CORPUS, report=False
    )
    new = [json.loads(line) for line in _lines(out / "explanations.jsonl")[n_explanations:]]
    assert sorted((e["method"], e["example"]) for e in new) == sorted(
        (m, "dev-0003") for m in PIPELINE_METHODS
    )
    assert (out / "sanity.jsonl").read_bytes() == before["sanity.jsonl"]


def test_pipeline_resume_completes_abs_rankings_cut_off_by_a_crash(
    pipeline: PipelineRun, tmp_path: Path
) -> None:
    out = _copy_run(pipeline, tmp_path)
    last = pipeline.examples[-1].id
    # a crash while scoring 'lime|abs' on the last example: the rows of 'lime' are written,
    # later ones are not, and the sanity check has not started
    lines = _lines(out / "results.csv")
    cut = next(i for i, line in enumerate(lines) if line.startswith(f"lime|abs,{last},"))
    (out / "results.csv").write_text("".join(lines[:cut]), encoding="utf-8")
    for name, drop in (
        ("explanations.jsonl", {("random", last)}),
        ("curves.jsonl", {("lime|abs", last), ("random", last)}),
    ):
        kept = [
            line
            for line in _lines(out / name)
            if (json.loads(line)["method"], json.loads(line)["example"]) not in drop
        ]
        (out / name).write_text("".join(kept), encoding="utf-8")
    (out / "sanity.jsonl").unlink()
    run_study(pipeline.tm, pipeline.examples, out, pipeline.config, corpus=CORPUS, report=False)

    def keys(run: Path) -> set[tuple[str, str, str]]:
        return {(r["method"], r["example"], r["metric"]) for r in RunStore(run).results()}

    assert keys(out) == keys(pipeline.out)


def test_pipeline_resume_completes_a_cut_off_sanity_check(
    pipeline: PipelineRun, tmp_path: Path
) -> None:
    out = _copy_run(pipeline, tmp_path)
    kept = [line for line in _lines(out / "sanity.jsonl") if json.loads(line)["stage_index"] == 0]
    (out / "sanity.jsonl").write_text("".join(kept), encoding="utf-8")
    run_study(pipeline.tm, pipeline.examples, out, pipeline.config, corpus=CORPUS, report=False)
    assert len(RunStore(out).sanity()) == len(PIPELINE_METHODS) * len(STAGES)


def test_stored_prob_is_a_probability_for_a_logits_model(
    tmp_path: Path, tokenizer: BertTokenizer
) -> None:
    tm = TextModel(_build(BertForSequenceClassification, seed=0), tokenizer, "logits")
    ex = tm.encode(SENTENCES[0][0], "dev-0000", SENTENCES[0][1])
    config = StudyConfig(("random",), captum_examples=0, sanity_examples=0)
    (explanation,) = run_study(tm, [ex], tmp_path, config, report=False).explanations()
    expected = float(tm.probabilities([ex.input_ids])[0, explanation["pred"]])
    assert explanation["prob"] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------- hidden states


@pytest.mark.parametrize("state", ["pooled", 1])
def test_state_study(state: str | int, tmp_path: Path, tokenizer: BertTokenizer) -> None:
    tm = TextModel(_build(BertModel, seed=2), tokenizer, state)
    examples = [tm.encode(s, f"dev-{i:04d}") for i, (s, _) in enumerate(SENTENCES[:2])]
    methods = ("ours", "saliency", "random")
    config = StudyConfig(methods, captum_examples=1, sanity_examples=1)
    store = run_study(tm, examples, tmp_path, config, corpus=CORPUS)
    removers = ("mask", "delete") if state == "pooled" else ("mask",)
    state_metrics = {
        f"state_shift/{r}{at}" for r in removers for at in ("", "@10%", "@20%", "@50%")
    } | {f"tau_loo/{r}" for r in removers}
    found: dict[tuple[str, str], set[str]] = {}
    for r in store.results():
        found.setdefault((r["method"], r["example"]), set()).add(r["metric"])
        assert np.isfinite(r["value"]), r
    assert found == {
        (m, ex.id): state_metrics | {"seconds", "abstained"} | (CAPTUM_METRICS if i == 0 else set())
        for m in methods
        for i, ex in enumerate(examples)
    }
    if state == 1:
        assert not any("/delete" in metric for metrics in found.values() for metric in metrics)
    meta = store.read_meta()
    assert meta["task"] == "state"
    assert all(meta["metrics"][m]["better"] == "higher" for m in state_metrics)
    stages = {(r["stage"], r["stage_index"]) for r in store.sanity()}
    assert stages == {("layer 2", 0), ("layer 1", 1), ("embeddings", 2)}
    assert (tmp_path / "report.html").is_file()


# ---------------------------------------------------------------------------- command line


def test_cli_methods_lists_every_registered_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(METHODS)


@pytest.fixture(scope="module")
def saved_classifier(
    tmp_path_factory: pytest.TempPathFactory, classifier: TextModel
) -> tuple[Path, Path]:
    """A saved classifier folder and a 6-row ``sentence<TAB>label`` file."""
    folder = tmp_path_factory.mktemp("cli")
    model_dir = folder / "tiny-bert"
    classifier.model.save_pretrained(model_dir)
    classifier.tokenizer.save_pretrained(model_dir)
    data = folder / "data.tsv"
    rows = ["sentence\tlabel", *(f"{s}\t{y}" for s, y in SENTENCES)]
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return model_dir, data


def _study_args(model_dir: Path, data: Path, out: Path, methods: str) -> list[str]:
    return [
        "study", "--model", str(model_dir), "--data", str(data), "--n", "2", "--corpus", "3",
        "--methods", methods, "--captum-examples", "0", "--sanity-examples", "0",
        "--out", str(out),
    ]  # fmt: skip


def test_cli_study_writes_the_report_and_results(
    saved_classifier: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir, data = saved_classifier
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    assert main(_study_args(model_dir, data, out, "ours,random")) == 0
    assert torch.get_num_threads() == threads
    assert "report.html" in capsys.readouterr().out
    assert (out / "report.html").is_file()
    with (out / "results.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], r["example"]) for r in rows} == {
        (m, f"data-{i:04d}") for m in ("ours", "random") for i in range(2)
    }
    assert not any(r["metric"] in CAPTUM_METRICS for r in rows)
    meta = RunStore(out).read_meta()
    assert meta["model"] == "tiny-bert" and meta["task"] == "classifier"
    assert meta["command"].startswith("python -m comparisons study --model ")
    assert not (out / "sanity.jsonl").exists()


@pytest.mark.parametrize("option", ["--methods", "--limit"])
def test_cli_unknown_method_names_the_valid_ones(
    option: str, saved_classifier: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, data = saved_classifier
    out = tmp_path / "run"
    args = _study_args(model_dir, data, out, "ours,random")
    args += [option, "nope" if option == "--methods" else "nope=2"]
    with pytest.raises(ValueError, match=r"unknown method 'nope'; valid names: .*\bours\b"):
        main(args)
    assert not out.exists()
