"""The one-line Hugging Face API, ``captum_perturb.explain`` (issue 24).

Tiny random models built from configs (a word-piece tokenizer so that a word can be
several tokens) check the plumbing: whole words, padding, targets, the three model kinds,
a pipeline, σ_S from a corpus and its cache, the result's table, page and figure, the
errors, and that nothing the caller owns changes. The packaged MiniLM checks the
packaged σ_S. Tolerances between two estimates of the same quantity are 4 standard
errors (whose calibration ``tests/test_calibration.py`` checks) plus round-off.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch
import transformers
from browser import open_offline
from contract import assert_model_untouched, model_snapshot
from llm_models import causal_lm
from llm_models import tokenizer as llm_tokenizer
from torch import nn

import captum_perturb.hf.state_std as hf_state_std
from captum_perturb import Explanation, FixedPointConfig, explain, explain_layers
from captum_perturb.hf.testing import word_tokenizer
from captum_perturb.hf.words import word_groups

matplotlib.use("Agg")

WORDS = ["a", "gorgeous", ",", "witty", "movie", ".", "dull", "plot", "sed", "##uctive"]
TEXTS = ["a gorgeous , witty , seductive movie .", "a dull plot"]
#: "seductive" is two tokens (sed ##uctive) and one word; [CLS]/[SEP] are no words
TEXT_WORDS = [
    ["a", "gorgeous", ",", "witty", ",", "seductive", "movie", "."],
    ["a", "dull", "plot"],
]
QUICK = FixedPointConfig(max_iter=6)
SETTLED = FixedPointConfig(max_iter=400, tol=0.05)


def _config(vocab: int = len(WORDS) + 4, **extra: Any) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, **extra,
    )  # fmt: skip


def _classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    labels = {0: "negative", 1: "positive"}
    cfg = _config(num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    return transformers.BertForSequenceClassification(cfg).eval()


def _encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return transformers.BertModel(_config()).eval()


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_classifier_whole_words_table_and_signed_reading() -> None:
    tok = word_tokenizer(WORDS)
    model = _classifier().train()  # left in train mode by the caller: restored after
    before = model_snapshot(model)
    exp = _quiet(explain, model, tok, TEXTS, config=QUICK)
    assert_model_untouched(model, before)
    assert isinstance(exp, Explanation) and exp.kind == "classifier"
    assert exp.words == TEXT_WORDS
    table = exp.to_pandas()
    assert len(table) == sum(len(w) for w in TEXT_WORDS)
    assert {"example", "word", "score", "std_error", "direction", "signed_score"} <= set(table)
    assert table["word"].tolist() == [w for ws in TEXT_WORDS for w in ws]
    assert (table["score"] >= 0).all() and (table["std_error"] >= 0).all()
    assert set(table["direction"]) <= {-1, 0, 1}
    assert (table["signed_score"] == table["direction"] * table["score"]).all()
    # default target: the predicted class, named by its label
    with torch.no_grad():
        enc = tok(TEXTS, return_tensors="pt", padding=True)
        predicted = model(**enc).logits.argmax(-1).tolist()
    assert exp.targets == [["negative", "positive"][p] for p in predicted]


def test_word_scores_are_the_sum_over_the_words_elements() -> None:
    """A word's nats are its group's score per dimension × its tokens × dims (the
    Captum result's attributions summed over the word's elements)."""
    tok = word_tokenizer(WORDS)
    exp = _quiet(explain, _encoder(), tok, TEXTS[:1], config=QUICK)
    result = exp.results[0]
    attributions = result.attributions[0]  # (T, D), text 0
    sigma = result.sigma[0]
    enc = tok(TEXTS[:1])
    for w in range(len(TEXT_WORDS[0])):
        at = torch.tensor([i == w for i in enc.word_ids(0)])
        assert math.isclose(float(attributions[at].sum()), float(exp.scores[0][w]), rel_tol=1e-5)
        # saturated: the word's σ is the bound
        at_bound = bool((sigma[at] >= result.estimate.sigma_max[0] * (1 - 1e-6)).all())
        assert bool(exp.saturated[0][w]) == at_bound


def test_padding_does_not_change_a_texts_explanation() -> None:
    """A text explained alone and padded in a batch with a longer one: the same within 4
    standard errors (the noise differs, the estimate may not)."""
    tok = word_tokenizer(WORDS)
    model = _encoder()
    alone = _quiet(explain, model, tok, [TEXTS[1]], config=SETTLED, seed=1)
    batch = _quiet(explain, model, tok, [TEXTS[0], TEXTS[1]], config=SETTLED, seed=2)
    a, b = alone.scores[0], batch.scores[1]
    bound = 4 * (alone.std_errors[0].square() + batch.std_errors[1].square()).sqrt() + 1e-4
    assert alone.converged[0] and batch.converged[1]
    assert bool(((a - b).abs() <= bound).all()), (a, b, bound)


def test_targets_by_index_and_label_and_their_errors() -> None:
    tok, model = word_tokenizer(WORDS), _classifier()
    by_name = _quiet(explain, model, tok, TEXTS, target="positive", config=QUICK, seed=3)
    by_index = _quiet(explain, model, tok, TEXTS, target=1, config=QUICK, seed=3)
    assert by_name.targets == ["positive", "positive"]
    assert all(torch.equal(x, y) for x, y in zip(by_name.scores, by_index.scores, strict=True))
    per_text = _quiet(explain, model, tok, TEXTS, target=["negative", 1], config=QUICK)
    assert per_text.targets == ["negative", "positive"]
    with pytest.raises(ValueError, match=r"'great' is not a label of this model: \['negative'"):
        explain(model, tok, TEXTS, target="great")
    with pytest.raises(ValueError, match="not a class of this model"):
        explain(model, tok, TEXTS, target=2)
    with pytest.raises(ValueError, match="target has 3 entries for 2 texts"):
        explain(model, tok, TEXTS, target=[0, 1, 0])


def test_a_pipeline_is_its_model_and_tokenizer() -> None:
    tok, model = word_tokenizer(WORDS), _classifier()
    pipe = transformers.pipeline("text-classification", model=model, tokenizer=tok)
    direct = _quiet(explain, model, tok, TEXTS, config=QUICK, seed=4)
    piped = _quiet(explain, pipe, TEXTS, config=QUICK, seed=4)
    assert piped.kind == "classifier"
    assert all(torch.equal(x, y) for x, y in zip(direct.scores, piped.scores, strict=True))


@pytest.mark.parametrize(
    ("task", "kind"), [("feature-extraction", "encoder"), ("text-generation", "causal_lm")]
)
def test_pipelines_of_the_other_kinds(task: str, kind: str) -> None:
    """An encoder's and a causal LM's pipeline: the same explanation as their model."""
    if kind == "encoder":
        model, tok, text, target = _encoder(), word_tokenizer(WORDS), TEXTS[1], None
    else:
        model, tok, text, target = causal_lm("gpt2"), llm_tokenizer(), "the film is a", " ride"
    pipe = transformers.pipeline(task, model=model, tokenizer=tok)
    direct = _quiet(explain, model, tok, text, target=target, config=QUICK, seed=6)
    piped = _quiet(explain, pipe, text, target=target, config=QUICK, seed=6)
    assert piped.kind == kind and torch.equal(direct.scores[0], piped.scores[0])


def test_causal_lm_words_are_template_segments() -> None:
    tok, model = llm_tokenizer(), causal_lm("gpt2")
    before = model_snapshot(model)
    exp = _quiet(explain, model, tok, ["the film is a"], target=" charming ride", config=QUICK)
    assert_model_untouched(model, before)
    assert exp.kind == "causal_lm" and exp.words == [["the", "film", "is", "a"]]
    assert exp.targets == [" charming ride"]
    assert exp.scores[0].shape == (4,) and bool((exp.scores[0] >= 0).all())
    generated = _quiet(
        explain, model, tok, "the film is a", gen_args={"max_new_tokens": 2}, config=QUICK
    )
    assert len(generated.targets[0].split()) == 2


def test_layers_all_sums_each_words_tokens() -> None:
    """``layers="all"``: one row per word and layer, the word's score the sum of its
    tokens' nats from ``explain_layers`` on the same encoding and seed."""
    tok, model = word_tokenizer(WORDS), _encoder()
    exp = _quiet(explain, model, tok, TEXTS[:1], layers="all", config=QUICK, seed=5)
    assert exp.kind == "layers" and exp.layers == [0, 1, 2]
    table = exp.to_pandas()
    assert len(table) == 3 * len(TEXT_WORDS[0]) and sorted(set(table["layer"])) == [0, 1, 2]
    enc = tok(TEXTS[:1], return_tensors="pt", return_special_tokens_mask=True)
    info = _quiet(explain_layers, model, dict(enc), special_tokens="exclude", config=QUICK, seed=5)
    seductive = [i for i, w in enumerate(enc.word_ids(0)) if w == 5]
    assert len(seductive) == 2
    expected = info.nats_kept[0][:, seductive].sum(1)
    assert torch.allclose(exp.scores[0][:, 5], expected, rtol=1e-5)


def test_corpus_state_std_is_estimated_once_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok, model = word_tokenizer(WORDS), _classifier()
    corpus = ["a movie", "a dull movie", "a witty plot", "gorgeous , witty", "a plot ."] * 4
    first = _quiet(explain, model, tok, TEXTS, corpus=corpus, cache_dir=tmp_path, config=QUICK)
    assert first.normaliser == "corpus" and len(list(tmp_path.glob("logits-*.pt"))) == 1

    def no_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cached σ_S must be loaded, not estimated again")

    monkeypatch.setattr("captum_perturb.attr.state_std.estimate_state_std", no_pass)
    again = _quiet(explain, model, tok, TEXTS, corpus=corpus, cache_dir=tmp_path, config=QUICK)
    assert all(torch.equal(x, y) for x, y in zip(first.scores, again.scores, strict=True))
    monkeypatch.undo()
    _quiet(explain, model, tok, TEXTS, corpus=corpus[:5], cache_dir=tmp_path, config=QUICK)
    assert len(list(tmp_path.glob("logits-*.pt"))) == 2  # another corpus, another key
    assert hf_state_std.cache_folder(None).name == "state_std"


def test_without_a_corpus_the_warning_says_how_to_pass_one() -> None:
    tok = word_tokenizer(WORDS)
    with pytest.warns(UserWarning, match=r"no corpus= given.*Pass corpus=\[\.\.\.\]"):
        exp = explain(_encoder(), tok, TEXTS[1], config=QUICK)
    assert exp.normaliser == "mean square fallback"


def test_packaged_minilm_uses_the_packaged_state_std(minilm_dir: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning
        warnings.filterwarnings("ignore", message=".*did not meet the stopping rule.*")
        exp = explain(model, tok, "a gorgeous , witty , seductive movie .", config=QUICK)
    assert exp.normaliser == "packaged state_std"
    assert exp.words[0] == ["a", "gorgeous", ",", "witty", ",", "seductive", "movie", "."]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m, t: explain(m, t, []), ValueError, "texts is empty"),
        (lambda m, t: explain(m, t, " ".join(["a"] * 70)), ValueError, "longer than the model"),
        (lambda m, t: explain(m, None, "a movie"), TypeError, "pass the model's tokenizer"),
        (lambda m, t: explain(m, t, ["a", 3]), ValueError, r"texts\[1\] is not a non-empty"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_model_is_untouched(
    call: Any, error: type[Exception], message: str
) -> None:
    tok, model = word_tokenizer(WORDS), _classifier()
    before = model_snapshot(model)
    with pytest.raises(error, match=message):
        call(model, tok)
    assert_model_untouched(model, before)


def test_unsupported_models_and_mismatched_tokenizers() -> None:
    tok = word_tokenizer(WORDS)
    torch.manual_seed(0)
    tagger = transformers.BertForTokenClassification(_config(num_labels=3))
    with pytest.raises(TypeError, match="BertForTokenClassification is not a model class"):
        explain(tagger, tok, "a movie")
    with pytest.raises(TypeError, match="Hugging Face transformers model"):
        explain(nn.Linear(3, 2), tok, "a movie")
    big = word_tokenizer([*WORDS, *(f"w{i}" for i in range(20))])
    with pytest.raises(ValueError, match="do not belong together"):
        explain(_classifier(), big, "a movie")
    # a slow (Python) tokenizer's encoding does not know the words of its tokens
    slow_encoding = transformers.BatchEncoding({"input_ids": torch.tensor([[2, 4, 8, 3]])})
    with pytest.raises(TypeError, match="fast tokenizer"):
        word_groups(slow_encoding, ["a movie"])


def test_the_page_renders_every_word_with_visible_error_bars(tmp_path: Path) -> None:
    """The HTML opens offline in headless Chromium: Captum's table and the bars are
    there, every word is in the text, every error bar has a visible height."""
    tok = word_tokenizer(WORDS)
    exp = _quiet(explain, _classifier(), tok, TEXTS, config=QUICK)
    path = tmp_path / "explanation.html"
    exp.to_html(path)
    assert exp._repr_html_() in path.read_text(encoding="utf-8")
    with open_offline(path) as view:
        text = view.page.inner_text("body")
        for words in TEXT_WORDS:
            for word in words:
                assert word in text
        bars = view.page.locator(".cp-err")
        assert bars.count() == sum(len(w) for w in TEXT_WORDS)
        for i in range(bars.count()):
            box = bars.nth(i).bounding_box()
            assert box is not None and box["height"] >= 1 and box["width"] >= 1
        assert view.page.locator("text=Word Importance").count() == len(TEXTS)
        assert view.blocked_requests == [] and view.page_errors == []


def test_plot_draws_one_bar_per_word_with_error_bars() -> None:
    tok = word_tokenizer(WORDS)
    exp = _quiet(explain, _classifier(), tok, TEXTS, config=QUICK)
    fig = exp.plot(example=0)
    ax = fig.axes[0]
    assert len(ax.patches) == len(TEXT_WORDS[0])
    assert [t.get_text() for t in ax.get_xticklabels()] == TEXT_WORDS[0]
    errorbar = next(c for c in ax.containers if type(c).__name__ == "ErrorbarContainer")
    assert len(errorbar.lines[2][0].get_segments()) == len(TEXT_WORDS[0])


def test_console_script_writes_page_figure_and_table(tmp_path: Path) -> None:
    """``captum-perturb explain --model DIR "text"`` on a saved model folder, as the
    installed console script: the three files, the table's words."""
    import csv
    import shutil
    import subprocess

    script = shutil.which("captum-perturb")
    if script is None:
        pytest.fail("the console script is not installed: pip install -e . registers it")
    folder = tmp_path / "model"
    _classifier().save_pretrained(folder)
    word_tokenizer(WORDS).save_pretrained(folder)
    out = tmp_path / "out"
    done = subprocess.run(
        [script, "explain", "--model", str(folder), TEXTS[1], "--max-iter", "4",
         "--target", "positive", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    with open(out / "explanation.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["word"] for r in rows] == TEXT_WORDS[1]
    assert {r["target"] for r in rows} == {"positive"}
    assert (out / "explanation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dull" in (out / "explanation.html").read_text(encoding="utf-8")
