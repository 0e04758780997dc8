"""The layer-by-layer study (comparisons.layer_analysis) on tiny random BERTs, offline.

Models are built from a config with a fixed seed (hidden 16, 3 layers: the
staircase pass must cut the attention mask that BERT hands unchanged to every block) and a
``BertTokenizer`` from a vocabulary file in ``tmp_path``; the VADER lexicon is injected
(a small dict), never downloaded.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from contract import one_thread

from captum_perturb import LayerInformation, explain_layers

transformers = pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("IPython")

from comparisons import layer_analysis as la  # noqa: E402
from comparisons.__main__ import main  # noqa: E402

_VOCAB = (
    "the a film movie is was and not very good great awful bad boring , . ! 's it "
    "funny dull story plot & < > ##ly"
)
WORDS = _VOCAB.split()
LEXICON = {"good": 1.9, "great": 3.1, "awful": -2.0, "bad": -2.5, "boring": -1.3, "funny": 1.9}
LEXICON["dull"] = -0.4  # |valence| < 1: not a sentiment word
SENTENCES = [
    "the film was great !",
    "a boring , dull story and bad plot .",
    "it 's not very funny",
    "awful movie < & >",
]


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def tokenizer(tmp_path: Path) -> Any:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return transformers.BertTokenizer(str(vocab), do_lower_case=True)


def _config(tokenizer: Any) -> Any:
    return transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )


def _encoder(tokenizer: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return transformers.BertModel(_config(tokenizer)).eval()


def _classifier(tokenizer: Any, seed: int = 1) -> Any:
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(_config(tokenizer)).eval()


@pytest.fixture
def info(tokenizer: Any) -> LayerInformation:
    enc = tokenizer(SENTENCES[:2], return_tensors="pt", padding=True)
    with pytest.warns(UserWarning, match="no state_std"):
        return explain_layers(_encoder(tokenizer), enc, tokenizer=tokenizer, seed=0)


# ---------------------------------------------------------------------------- groups
def test_stop_words_is_our_list_of_function_words() -> None:
    words = la.stop_words()
    assert isinstance(words, frozenset)
    assert 120 <= len(words) <= 180
    assert {"the", "a", "and", "of", "is", "it", "they", ",", "."} <= words
    assert not {"good", "film", "boring"} & words


def test_groups_normalise_word_pieces_and_punctuation() -> None:
    g = la.token_groups("both", LEXICON)
    assert list(g) == [la.SENTIMENT, la.OTHER, la.STOP, la.CONTENT]
    sentiment, other, stop, content = g.values()
    for tok in ("good", "Great", "##bad", "Ġawful", "▁boring"):
        assert sentiment(tok) and not other(tok), tok
    for tok in ("dull", "film", "the", "!", "##ly"):
        assert other(tok) and not sentiment(tok), tok
    for tok in ("the", "The", "Ġthe", "▁and", "##'s", "...", "--", "!?", "Ġ", "[", "<"):
        assert stop(tok) and not content(tok), tok
    for tok in ("film", "##ly", "boring", "Ġmovie"):
        assert content(tok) and not stop(tok), tok
    assert list(la.token_groups("sentiment", LEXICON)) == [la.SENTIMENT, la.OTHER]
    assert list(la.token_groups("stopwords")) == [la.STOP, la.CONTENT]
    with pytest.raises(ValueError, match="stopwords"):
        la.token_groups("nouns", LEXICON)


def _fake_sdist(path: Path, lexicon_text: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (
            ("vaderSentiment-3.3.2/README.rst", "readme"),
            ("vaderSentiment-3.3.2/vaderSentiment/vader_lexicon.txt", lexicon_text),
        ):
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def test_lexicon_parsed_from_sdist_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "good\t1.9\t0.9\t[2, 2]\r\n:)\t2.0\t0.5\t[2, 2]\r\n"
    text += "broken line\r\nbad\t-2.5\t1.0\t[-3]\r\n"
    sdist = _fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", text)
    assert la.lexicon_from_sdist(sdist) == {"good": 1.9, ":)": 2.0, "bad": -2.5}

    calls = []

    def fake_download(dest: Path) -> Path:
        calls.append(dest)
        return sdist

    monkeypatch.setattr(la, "_download_sdist", fake_download)
    cache = tmp_path / "cache"
    assert la.vader_lexicon(cache) == {"good": 1.9, ":)": 2.0, "bad": -2.5}
    assert json.loads((cache / "vader_lexicon.json").read_text())["bad"] == -2.5
    assert la.vader_lexicon(cache)["good"] == 1.9
    assert len(calls) == 1  # the second call read the cache
    monkeypatch.setenv("CAPTUM_PERTURB_CACHE", str(cache))
    assert la.vader_lexicon() == {"good": 1.9, ":)": 2.0, "bad": -2.5}
    with pytest.raises(RuntimeError, match="holds no"):
        la.lexicon_from_sdist(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        member = tarfile.TarInfo("pkg/README")
        tar.addfile(member, io.BytesIO(b""))
    return path


def test_lexicon_download_failure_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(dest: Path) -> Path:
        raise RuntimeError("pip download failed: no network")

    monkeypatch.setattr(la, "_download_sdist", fail)
    with pytest.raises(RuntimeError, match=r"pip download .*vaderSentiment==3\.3\.2"):
        la.vader_lexicon(tmp_path)
    assert not (tmp_path / "vader_lexicon.json").exists()


# ---------------------------------------------------------------------------- pictures
def test_concat_pads_and_keeps_every_sentence(tokenizer: Any) -> None:
    model = _encoder(tokenizer)
    parts = []
    for chunk in (SENTENCES[:1], SENTENCES[1:3]):
        enc = tokenizer(chunk, return_tensors="pt", padding=True)
        with pytest.warns(UserWarning):
            parts.append(explain_layers(model, enc, tokenizer=tokenizer, seed=0))
    both = la.concat_information(parts)
    width = max(p.mask.shape[1] for p in parts)
    assert both.nats_kept.shape == (3, 4, width)
    assert all(len(row) == width for row in both.tokens)
    assert int(both.mask.sum()) == sum(int(p.mask.sum()) for p in parts)
    torch.testing.assert_close(both.nats_kept[1:], parts[1].nats_kept, equal_nan=True)
    short = parts[0].nats_kept.shape[-1]
    assert torch.isnan(both.nats_kept[0, :, short:]).all()
    assert both.evaluations is not None and parts[1].evaluations is not None
    assert torch.equal(both.evaluations[1:], parts[1].evaluations)
    unknown = dataclasses.replace(parts[0], evaluations=None)
    assert la.concat_information([unknown, parts[1]]).evaluations is None


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_heatmap_writes_png_and_svg(info: LayerInformation, tmp_path: Path, suffix: str) -> None:
    path = la.heatmap(info, 1, tmp_path / f"map{suffix}", title="tiny")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]
    if suffix == ".svg":  # the first sentence is shorter: its padding is not drawn
        la.heatmap(info, 0, tmp_path / "short.svg")
        assert "[PAD]" not in (tmp_path / "short.svg").read_text()
    with pytest.raises(ValueError, match="png"):
        la.heatmap(info, 0, tmp_path / "map.pdf")


def test_layers_html_one_row_per_layer_and_sentence(info: LayerInformation, tmp_path: Path) -> None:
    path = la.layers_html(info, None, tmp_path / "layers.html", "tiny <model>")
    page = path.read_text()
    assert page.count("<tr><td") == len(info.layers) * len(info.tokens)
    for name in info.layer_names():
        assert name in page
    for word in ("great", "boring", "[CLS]"):
        assert word in page
    assert "[PAD]" not in page
    assert "tiny &lt;model&gt;" in page
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)
    one = la.layers_html(info, [1], tmp_path / "one.html", "one").read_text()
    assert one.count("<tr><td") == len(info.layers)


def test_layers_html_escapes_tokens(tokenizer: Any, tmp_path: Path) -> None:
    enc = tokenizer(SENTENCES[3:], return_tensors="pt")
    with pytest.warns(UserWarning):
        info = explain_layers(_encoder(tokenizer), enc, tokenizer=tokenizer, seed=0)
    page = la.layers_html(info, None, tmp_path / "x.html", "x").read_text()
    assert "&lt;" in page and "&amp;" in page
    assert "< &" not in page


def test_depth_curves_writes_png(tmp_path: Path) -> None:
    curves = {
        "m1": {"a": [1.0, 2.0, 3.0], "b": [2.0, 1.0, float("nan")]},
        "m2": {"a": [3.0, 2.0, 1.0], "b": [1.0, 1.0, 1.0]},
    }
    path = la.depth_curves(curves, ["embeddings", "layer 1", "layer 2"], tmp_path / "c.png", "t")
    assert path.read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------- uncertainty
def _values_info(values: torch.Tensor, tokens: list[list[str]]) -> LayerInformation:
    """A result whose nats kept are ``values`` (N, L, T); every position real, none special."""
    n, n_lay, t = values.shape
    return LayerInformation(
        layers=list(range(n_lay)),
        tokens=tokens,
        sigma=torch.ones(n, n_lay, t),
        entropy=torch.zeros(n, n_lay, t),
        nats_kept=values,
        std_error=torch.zeros(n, n_lay, t),
        converged=torch.ones(n, n_lay, dtype=torch.bool),
        mask=torch.ones(n, t, dtype=torch.bool),
        special=torch.zeros(n, t, dtype=torch.bool),
        sigma_max=1.0,
        sigma_max_source="given",
        rate=0.1,
        normaliser={str(k): "state_std" for k in range(n_lay)},
        dim=4,
    )


def test_sentence_sums_add_up_to_mean_by_layer(info: LayerInformation) -> None:
    groups = la.token_groups("both", LEXICON)
    sums, counts = la.sentence_sums(info, groups)
    assert sums.shape == counts.shape == (2, len(groups), len(info.layers))
    means = info.mean_by_layer(groups)
    for g, name in enumerate(groups):
        pooled = (sums[:, g].sum(0) / counts[:, g].sum(0)).tolist()
        assert pooled == pytest.approx(means[name], nan_ok=True)


def test_bootstrap_interval_of_a_mean_matches_normal_theory() -> None:
    # one token per sentence: the bootstrap distribution of the mean has sd s/sqrt(N)
    # (s with 1/N); with N = 400 it is normal to within a few thousandths of an sd, and
    # a percentile from B = 4000 replicates has a Monte-Carlo sd of
    # sqrt(p(1-p)/B)/phi(1.96) = 0.042 bootstrap sds: 0.25 sd is a 6-sigma tolerance.
    gen = torch.Generator().manual_seed(0)
    values = 100.0 + 10.0 * torch.randn(400, 1, 1, generator=gen, dtype=torch.float64)
    info = _values_info(values.float(), [["good"]] * 400)
    got = la.bootstrap_curves({"m": info}, {"all": lambda t: True}, n_boot=4000, seed=1)
    lo, hi = got["curves"]["m"]["all"][0]
    v = values.flatten().float().double()
    sd = float(v.std(unbiased=False)) / 400**0.5
    mean = float(v.mean())
    assert abs(lo - (mean - 1.96 * sd)) < 0.25 * sd
    assert abs(hi - (mean + 1.96 * sd)) < 0.25 * sd
    assert got["level"] == 0.95 and got["n_boot"] == 4000 and got["ratios"] == {}


def test_bootstrap_ratio_of_proportional_groups_is_exact() -> None:
    # every sentence: the sentiment word keeps exactly twice what the other word keeps,
    # so every replicate's ratio is 2 and the interval collapses onto it
    gen = torch.Generator().manual_seed(0)
    other = 50.0 + 10.0 * torch.rand(30, 2, 1, generator=gen)
    values = torch.cat([2.0 * other, other], dim=-1)
    info = _values_info(values, [["good", "film"]] * 30)
    groups = la.token_groups("sentiment", LEXICON)
    got = la.bootstrap_curves({"m": info}, groups, n_boot=200)
    (label,) = got["ratios"]["m"]
    assert label == f"{la.SENTIMENT} / {la.OTHER}"
    for est, lo, hi in got["ratios"]["m"][label]:
        assert est == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_bootstrap_pairs_models_on_the_same_sentences() -> None:
    gen = torch.Generator().manual_seed(0)
    values = 50.0 + 10.0 * torch.rand(20, 3, 2, generator=gen)
    tokens = [["good", "film"]] * 20
    same = la.bootstrap_curves(
        {"a": _values_info(values, tokens), "b": _values_info(values.clone(), tokens)},
        la.token_groups("sentiment", LEXICON),
        n_boot=300,
    )
    assert same["curves"]["a"] == same["curves"]["b"]
    (change,) = same["ratio_change"].values()
    assert all(x == 0.0 for per_layer in change.values() for row in per_layer for x in row)
    # a model explained on other sentences is not paired with the first
    fewer = la.bootstrap_curves(
        {"a": _values_info(values, tokens), "b": _values_info(values[:5], tokens[:5])},
        la.token_groups("sentiment", LEXICON),
        n_boot=300,
    )
    assert fewer["ratio_change"] == {}
    with pytest.raises(ValueError, match="n_boot"):
        la.bootstrap_curves({"a": _values_info(values, tokens)}, {}, n_boot=0)


# ---------------------------------------------------------------------------- the study
def test_run_layers_two_models_writes_everything(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(cache_dir: object = None) -> dict[str, float]:
        raise AssertionError("the lexicon was injected: nothing may be downloaded")

    monkeypatch.setattr(la, "vader_lexicon", no_download)
    models = {
        "base": (_encoder(tokenizer), tokenizer),
        "tuned/cls": (_classifier(tokenizer), tokenizer),
    }
    out = tmp_path / "out"
    curves = la.run_layers(
        models, SENTENCES[:3], SENTENCES, out, groups="both", batch_size=2,
        cache_dir=tmp_path / "std", show_progress=False, lexicon=LEXICON,
    )  # fmt: skip
    assert list(curves) == ["base", "tuned/cls"]
    for groups in curves.values():
        assert list(groups) == [la.SENTIMENT, la.OTHER, la.STOP, la.CONTENT]
        assert all(len(v) == 4 and all(x == x for x in v) for v in groups.values())
    for folder in ("base", "tuned_cls"):
        for name in ("information.json", "information.csv", "heatmap.png", "heatmap.svg"):
            assert (out / folder / name).stat().st_size > 0, (folder, name)
        info = LayerInformation.load(out / folder / "information.json")
        assert len(info.tokens) == 3 and info.meta["corpus_size"] == len(SENTENCES)
        assert set(info.normaliser.values()) == {"state_std"}
        page = (out / folder / "layers.html").read_text()
        assert page.count("<tr><td") == 3 * 4
    assert list((tmp_path / "std").glob("layer-std-*.pt"))
    assert (out / "depth_curves.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((out / "curves.json").read_text())
    assert summary["curves"] == curves
    boot = summary["bootstrap"]
    for model, groups in curves.items():
        for group, values in groups.items():
            for (lo, hi), v in zip(boot["curves"][model][group], values, strict=True):
                assert lo - 1e-9 <= v <= hi + 1e-9
    assert set(boot["ratio_change"]) == {"tuned/cls − base"}
    index = (out / "index.html").read_text()
    assert "base" in index and "tuned/cls" in index
    assert index.count("data:image/png;base64,") == 1 + 2 * 3  # curves + 2 models × 3
    assert "fallback" not in index and "bootstrap intervals over sentences" in index
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", index)


def test_run_layers_without_corpus_says_so(tokenizer: Any, tmp_path: Path) -> None:
    models = {"base": (_encoder(tokenizer), tokenizer)}
    with pytest.warns(UserWarning, match="no state_std"):
        curves = la.run_layers(
            models, SENTENCES[:1], None, tmp_path, groups="stopwords", show_progress=False
        )
    assert list(curves["base"]) == [la.STOP, la.CONTENT]
    assert "fallback" in (tmp_path / "index.html").read_text()


def test_cli_layers_on_a_saved_model(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPTUM_PERTURB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(la, "vader_lexicon", lambda cache_dir=None: LEXICON)
    model_dir = tmp_path / "tiny"
    _encoder(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t1\n" for s in SENTENCES))
    out = tmp_path / "out"
    argv = ["layers", "--file", str(data), "--n", "2", "--models", str(model_dir)]
    argv += ["--corpus", "0", "--groups", "both", "--out", str(out), "--threads", "1"]
    with pytest.warns(UserWarning, match="no state_std"):
        assert main(argv) == 0
    folder = next(p for p in out.iterdir() if p.is_dir())
    info = LayerInformation.load(folder / "information.json")
    assert len(info.tokens) == 2
    assert info.tokens[0][1:4] == ["the", "film", "was"]
    index = (out / "index.html").read_text()
    assert la.SENTIMENT in index and "fallback" in index
    plain = tmp_path / "plain.txt"
    plain.write_text("the film was great !\n\n")
    assert la.read_sentence_file(plain) == ["the film was great !"]
