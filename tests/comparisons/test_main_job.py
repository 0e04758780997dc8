"""The main job (``comparisons/main_job.py``), offline; the slow tests run whole parts.

A two-layer, 32-wide BERT encoder built from a config with a fixed seed and a word-level
tokenizer stand in for the packaged MiniLM; the real job runs in ``bash .ci/main``.
Covered: which sentences and corpus the comparison takes (with and without SST-2),
resuming or restarting its run folder, the one-line summary, the option check, and the
opt-in parts: by default the comparison is skipped and the LLM page takes the small
GPT-2 recipe, ``--compare`` / ``--compare-n`` run the comparison, ``--full-llm`` asks for
the full recipe, and the closing summary names what was skipped and the flag for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("IPython")

from transformers import BertConfig, BertModel, BertTokenizer

from comparisons import main_job
from comparisons.models.text_model import TextModel
from comparisons.study.store import RunStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WORDS = ("the", "a", "movie", "was", "not", "very", "good", "bad", "great", "dull", "fun")
SENTENCES = [("the movie was not very good", 0), ("a great and fun movie", 1)]
CORPUS = ["the movie was dull", "a very bad movie", "great fun"]
METHODS = ("ours", "saliency", "random")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextModel:
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    special = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    vocab.write_text("\n".join([*special, *WORDS, "and"]) + "\n", encoding="utf-8")
    config = BertConfig(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(config).eval()
    return TextModel(model, BertTokenizer(str(vocab)), "pooled", name="tiny-bert, pooled")


@pytest.fixture(scope="module")
def encoder_dir(encoder: TextModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny encoder saved as a ``--model`` folder."""
    where = tmp_path_factory.mktemp("model")
    encoder.model.save_pretrained(str(where))
    encoder.tokenizer.save_pretrained(str(where))
    return where


def _write_dev(folder: Path, rows: list[tuple[str, int]]) -> None:
    (folder / "sst2").mkdir(parents=True)
    lines = ["sentence\tlabel", *(f"{s}\t{y}" for s, y in rows)]
    (folder / "sst2" / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_comparison_data_takes_the_first_sentences_and_the_last_as_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [(f"sentence {i}", i % 2) for i in range(6)]
    _write_dev(tmp_path, rows)
    monkeypatch.setenv("CAPTUM_PERTURB_DATA", str(tmp_path))
    sentences, corpus, data, notes = main_job.comparison_data(2, 3, "unused")
    assert sentences == rows[:2]
    assert corpus == ["sentence 3", "sentence 4", "sentence 5"]
    assert data == "SST-2 dev, first 2 sentences; σ_S from its last 3"
    assert notes == []
    _, corpus, _, notes = main_job.comparison_data(2, 0, "unused")
    assert corpus == [] and len(notes) == 1 and "fallback" in notes[0]


def test_comparison_data_without_sst2_uses_the_sentence_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPTUM_PERTURB_DATA", str(tmp_path / "nowhere"))
    sentences, corpus, data, notes = main_job.comparison_data(8, 100, "my sentence")
    assert sentences == [("my sentence", None)]
    assert corpus == []
    assert "not found" in data
    assert len(notes) == 1 and "not found" in notes[0] and "fallback" in notes[0]


def test_compare_methods_writes_a_report_then_resumes_or_restarts(
    encoder: TextModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "comparison"
    store = main_job.compare_methods(encoder, SENTENCES, CORPUS, out, methods=METHODS)
    rows = store.results()
    found = {(r["method"], r["example"]) for r in rows if r["metric"] == "state_shift/mask"}
    assert found == {(m, f"dev-{i:04d}") for m in METHODS for i in range(2)}
    captum = {(r["method"], r["example"]) for r in rows if r["metric"] == "infidelity"}
    assert len(captum) == len(METHODS) * min(2, main_job.COMPARE_CAPTUM_EXAMPLES)
    assert {r["example"] for r in store.sanity()} == {"dev-0000", "dev-0001"}
    assert (out / "report.html").is_file() and (out / "main_job.json").is_file()
    assert store.read_meta()["model"] == "tiny-bert, pooled"

    # the same settings: resumed, nothing recomputed
    before = (out / "results.csv").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(main_job, "run_study", _resume_only)
        main_job.compare_methods(encoder, SENTENCES, CORPUS, out, methods=METHODS)
    assert (out / "results.csv").read_bytes() == before

    # other sentences: the folder starts afresh
    store = main_job.compare_methods(encoder, SENTENCES[1:], CORPUS, out, methods=("random",))
    assert {(r["method"], r["example"]) for r in store.results()} == {("random", "dev-0000")}
    assert store.explanations()[0]["text"] == SENTENCES[1][0]


def _resume_only(tm: TextModel, examples: list, out_dir: Path, config: object, **kw: object):
    """Stands in for run_study: the folder must already hold every result."""
    store = RunStore(out_dir)
    for ex in examples:
        for m in METHODS:
            assert store.has_results(m, ex.id, "seconds"), (m, ex.id)
    return store


def test_compare_methods_leaves_a_foreign_folder_alone(encoder: TextModel, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not written by the main job"):
        main_job.compare_methods(encoder, SENTENCES, CORPUS, tmp_path, methods=("random",))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_summary_line_orders_methods_best_first_without_abs_rankings(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    metric = main_job.COMPARE_METRIC
    store.add_results(
        [
            ("random", "e0", metric, 0.1),
            ("random", "e1", metric, 0.3),
            ("lime", "e0", metric, 0.5),
            ("lime", "e1", metric, 0.7),
            ("lime|abs", "e0", metric, 0.9),
            ("ours", "e0", metric, 0.4),
            ("ours", "e1", "tau_loo/mask", 0.9),
        ]
    )
    line = main_job.summary_line(store)
    assert line == (
        f"mean {metric} over 2 sentence(s), higher is better: lime 0.6, random 0.2 "
        "(on fewer sentences, left out: ours)"
    )
    assert main_job.summary_line(RunStore(tmp_path / "empty")) == f"no {metric} results"


def test_negative_compare_n_is_refused_before_any_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main_job.main(["--compare-n", "-1"])
    assert info.value.code == 2
    assert "--compare-n: must be >= 0" in capsys.readouterr().err


def test_layer_part_writes_every_layer(encoder_dir: Path, tmp_path: Path) -> None:
    """The paper's analysis of the main job: all layers in one call, saved and drawn."""
    from captum_perturb import LayerInformation

    out = tmp_path / "out"
    args = ["--model", str(encoder_dir), "--sentence", SENTENCES[0][0], "--corpus-size", "0"]
    assert main_job.main([*args, "--compare-n", "0", "--llm", "none", "--out", str(out)]) == 0
    info = LayerInformation.load(out / "explanation.json")
    assert info.layers == [0, 1, 2]  # the embedding output and both blocks
    assert info.normaliser == {
        "0": "mean square fallback",
        "1": "mean square fallback",
        "2": "mean square fallback",
    }
    assert info.tokens[0][1:-1] == SENTENCES[0][0].split()
    assert LayerInformation.load(out / "explanation.csv").layers == [0, 1, 2]
    page = (out / "explanation.html").read_text(encoding="utf-8")
    assert all(name in page for name in ("embeddings", "layer 1", "layer 2"))
    assert (out / "explanation.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "compare_n", "llm"),
    [
        ([], 0, "small"),
        (["--compare"], main_job.COMPARE_N, "small"),
        (["--compare-n", "3"], 3, "small"),
        (["--compare", "--compare-n", "0"], 0, "small"),
        (["--full-llm"], 0, "full"),
        (["--llm", "full"], 0, "full"),
        (["--llm", "none"], 0, "none"),
    ],
)
def test_optional_parts_are_off_by_default_and_flags_turn_them_on(
    argv: list[str], compare_n: int, llm: str
) -> None:
    args = main_job._parser().parse_args(argv)
    assert (main_job._compare_n(args), args.llm) == (compare_n, llm)


def test_default_run_skips_the_comparison_and_says_how_to_run_it(
    encoder_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without flags and without SST-2: the explanation only; the summary names the
    skipped LLM page (no data) and comparison (``--compare``)."""
    monkeypatch.setenv("CAPTUM_PERTURB_DATA", str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    args = ["--model", str(encoder_dir), "--corpus-size", "0", "--layers", "0,1"]
    assert main_job.main([*args, "--sentence", SENTENCES[0][0], "--out", str(out)]) == 0
    assert (out / "explanation.json").is_file() and (out / "explanation.png").is_file()
    assert not (out / "comparison").exists() and not (out / "llm").exists()
    printed = capsys.readouterr().out
    assert "[1/1] explanation of the sentence, every layer: done in" in printed
    summary = printed[printed.index("main job done in") :]
    assert "ran:     explanation of the sentence, every layer" in summary
    assert "skipped: the LLM page:" in summary and "CAPTUM_PERTURB_DATA" in summary
    assert "skipped: the comparison of the methods and its sanity check (--compare" in summary


@pytest.mark.slow  # every default method and the sanity check: about a minute or two
def test_compare_n_runs_the_comparison_with_its_sanity_check(
    encoder_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--compare-n 1`` (``--compare`` takes :data:`~comparisons.main_job.COMPARE_N`):
    every default method on the first dev sentence, with Captum's metrics and the sanity
    check; without ``train.tsv`` the LLM page is still skipped."""
    data = tmp_path / "data"
    _write_dev(data, [*SENTENCES, *((s, 0) for s in CORPUS)])
    monkeypatch.setenv("CAPTUM_PERTURB_DATA", str(data))
    out = tmp_path / "out"
    args = ["--model", str(encoder_dir), "--corpus-size", "3", "--layers", "0,1"]
    assert main_job.main([*args, "--compare-n", "1", "--out", str(out)]) == 0
    store = RunStore(out / "comparison")
    rows = store.results()
    assert {r["example"] for r in rows} == {"dev-0000"}
    shifts = {r["method"] for r in rows if r["metric"] == "state_shift/delete"}
    assert {m for m in shifts if "|" not in m} == set(main_job.DEFAULT_METHODS)
    assert {r["example"] for r in store.sanity()} == {"dev-0000"}
    assert (out / "comparison" / "report.html").is_file()
    printed = capsys.readouterr().out
    assert "[2/2] comparison of the methods on 1 sentence(s): done in" in printed
    summary = printed[printed.index("main job done in") :]
    assert "ran:     comparison of the methods on 1 sentence(s)" in summary
    assert "skipped: the comparison" not in summary
    assert "skipped: the LLM page:" in summary


@pytest.mark.slow
def test_default_llm_page_takes_the_small_recipe(
    encoder_dir: Path,
    sst2_small_lm: Path,
    sst2_train_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With SST-2 and no flags: the LLM page on the cached GPT-2 of the small recipe (the
    fixture trains it once), and the summary says ``--full-llm`` was not asked for."""
    monkeypatch.setenv("CAPTUM_PERTURB_DATA", str(sst2_train_path.parent.parent))
    out = tmp_path / "out"
    args = ["--model", str(encoder_dir), "--corpus-size", "0", "--layers", "0"]
    assert main_job.main([*args, "--out", str(out)]) == 0
    assert (out / "llm" / "index.html").is_file() and (out / "llm" / "llm.json").is_file()
    assert sst2_small_lm.name in (out / "llm" / "llm.json").read_text(encoding="utf-8")
    assert not (out / "comparison").exists()
    printed = capsys.readouterr().out
    assert "[2/2] LLM page on the GPT-2 of the small recipe: done in" in printed
    summary = printed[printed.index("main job done in") :]
    assert "skipped: the full GPT-2 training (--full-llm" in summary
    assert "skipped: the comparison of the methods and its sanity check" in summary


@pytest.mark.slow
def test_layers_are_the_same_with_or_without_the_data(
    minilm_dir: Path, sst2_dev_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packaged MiniLM's explanation does not depend on ../shared: both runs use the
    σ_S shipped with the package (issue 9: without the data every layer used to switch to
    the fallback normaliser and the picture changed)."""
    import json

    args = ["--layers", "0,1", "--compare-n", "0", "--llm", "none"]
    monkeypatch.setenv("CAPTUM_PERTURB_DATA", str(sst2_dev_path.parent.parent))
    assert main_job.main([*args, "--out", str(tmp_path / "with")]) == 0
    monkeypatch.setenv("CAPTUM_PERTURB_DATA", str(tmp_path / "empty"))
    assert main_job.main([*args, "--out", str(tmp_path / "without")]) == 0
    runs = [
        json.loads((tmp_path / name / "explanation.json").read_text(encoding="utf-8"))
        for name in ("with", "without")
    ]
    assert runs[0]["normaliser"] == {"0": "packaged state_std", "1": "packaged state_std"}
    assert runs[0] == runs[1]  # the same σ_S and seed: the same bits
