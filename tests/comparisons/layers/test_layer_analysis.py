"""The layer-by-layer study (comparisons.layers) on tiny random BERTs, offline.

Models are built from a config with a fixed seed (hidden 16, 3 layers: the
staircase pass must cut the attention mask that BERT hands unchanged to every block) and a
``BertTokenizer`` from a vocabulary file in ``tmp_path``; the VADER lexicon is injected
(a small dict) there, and read from the installed ``vaderSentiment`` package where a
test says so. Whole-word groups are also checked on the packaged MiniLM's WordPiece
tokenizer.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from contract import one_thread
from scipy import stats as sps

from captum_perturb import LayerInformation, explain_layers
from comparisons.stats import BOOTSTRAP_RESAMPLES, LEVEL, bootstrap_means

transformers = pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("IPython")

from comparisons.__main__ import main  # noqa: E402
from comparisons.layers import curves, groups, page, plots, run  # noqa: E402

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


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(minilm_dir))


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
    words = groups.stop_words()
    assert isinstance(words, frozenset)
    assert 120 <= len(words) <= 180
    assert {"the", "a", "and", "of", "is", "it", "they", ",", "."} <= words
    # the words of SST-2's contractions ("it 's", "do n't"), also as BERT splits them
    assert {"'s", "n't", "'ve", "s", "n", "t", "ve"} <= words
    assert not {"good", "film", "boring"} & words


def test_group_predicates_normalise_markers_and_punctuation() -> None:
    g = groups.token_groups("both", LEXICON)
    assert list(g) == [groups.SENTIMENT, groups.OTHER, groups.STOP, groups.CONTENT]
    sentiment, other, stop, content = g.values()
    for tok in ("good", "Great", "##bad", "Ġawful", "▁boring"):
        assert sentiment(tok) and not other(tok), tok
    for tok in ("dull", "film", "the", "!", "##ly"):
        assert other(tok) and not sentiment(tok), tok
    for tok in ("the", "The", "Ġthe", "▁and", "##'s", "...", "--", "!?", "Ġ", "[", "<"):
        assert stop(tok) and not content(tok), tok
    for tok in ("film", "##ly", "boring", "Ġmovie"):
        assert content(tok) and not stop(tok), tok
    assert list(groups.token_groups("sentiment", LEXICON)) == [groups.SENTIMENT, groups.OTHER]
    assert list(groups.token_groups("stopwords")) == [groups.STOP, groups.CONTENT]
    with pytest.raises(ValueError, match="stopwords"):
        groups.token_groups("nouns", LEXICON)


def _pieces(tokens: list[str], flags: dict[str, list[bool]], start: int, stop: int) -> set[str]:
    """The groups of tokens[start:stop], asserting that every piece has the same."""
    seen = [frozenset(g for g, f in flags.items() if f[t]) for t in range(start, stop)]
    assert len(set(seen)) == 1, (tokens[start:stop], seen)
    return set(seen[0])


def test_groups_by_whole_word_with_minilm_wordpiece(minilm_tokenizer: Any) -> None:
    enc = minilm_tokenizer("an unwatchable film of cliches , heartwarming and charmless")
    tokens, ids = enc.tokens(), enc.word_ids()
    assert tokens[2:5] == ["un", "##watch", "##able"]
    assert tokens[7:10] == ["cl", "##iche", "##s"]
    assert tokens[11:14] == ["heart", "##war", "##ming"]
    assert tokens[15:17] == ["charm", "##less"]
    g = groups.token_groups("both", groups.vader_lexicon())
    flags = groups.group_tokens(tokens, g, word_ids=ids)
    # the pieces' markers give the same words as the tokenizer's word_ids()
    assert groups.group_tokens(tokens, g, skip=[i is None for i in ids]) == flags
    content_other = {groups.CONTENT, groups.OTHER}
    assert _pieces(tokens, flags, 2, 5) == content_other  # "unwatchable": not in VADER
    assert _pieces(tokens, flags, 7, 10) == content_other  # "##s" of "cliches": content
    sentiment_content = {groups.SENTIMENT, groups.CONTENT}
    assert _pieces(tokens, flags, 11, 14) == sentiment_content  # "heartwarming" 2.1
    assert _pieces(tokens, flags, 15, 17) == sentiment_content  # "charmless" −1.8
    assert _pieces(tokens, flags, 0, 1) == set()  # [CLS]: no word, no group
    stop = groups.token_groups("stopwords")[groups.STOP]
    assert stop("##s") and stop("ming") is False  # a piece alone would be a stop word


def test_word_index_from_markers() -> None:
    assert groups.word_index(["[CLS]", "cl", "##iche", "##s", "."], [True] + [False] * 4) == [
        None, 0, 0, 0, 1,
    ]  # fmt: skip
    # byte-level BPE: "Ġ" starts a word, a piece without it continues one, except across
    # punctuation; SentencePiece likewise with "▁"
    bpe = ["Ġan", "Ġun", "watch", "able", "Ġfilm", ".", "Ġdo", "Ġn", "'t"]
    assert groups.word_index(bpe) == [0, 1, 1, 1, 2, 3, 4, 5, 5]
    assert groups.word_index(["▁heart", "war", "ming", "▁!"]) == [0, 0, 0, 1]
    flags = groups.group_tokens(bpe, groups.token_groups("stopwords"))
    assert flags[groups.STOP] == [True, False, False, False, False, True, True, True, True]
    # padding and special tokens end a word and belong to none
    assert groups.word_index(["a", "##b", "", "##c"]) == [0, 0, None, 1]


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


def test_group_masks_by_whole_word(tokenizer: Any) -> None:
    sentence = "a badly funny film"
    tokens = tokenizer(sentence).tokens()
    assert tokens == ["[CLS]", "a", "bad", "##ly", "funny", "film", "[SEP]"]
    info = _values_info(torch.ones(1, 2, len(tokens)), [tokens])
    info = dataclasses.replace(info, special=torch.tensor([[1, 0, 0, 0, 0, 0, 1]]).bool())
    g = groups.token_groups("sentiment", LEXICON)
    masks = groups.group_masks(info, g, groups.tokenizer_words(tokenizer, [sentence]))
    # "badly" is not in the lexicon: neither of its pieces is a sentiment word
    assert masks[groups.SENTIMENT].tolist() == [[False, False, False, False, True, False, False]]
    assert masks[groups.OTHER].tolist() == [[False, True, True, True, False, True, False]]
    assert {k: v.tolist() for k, v in groups.group_masks(info, g).items()} == {
        k: v.tolist() for k, v in masks.items()
    }  # the markers agree with word_ids()
    # word ids are used where their tokens are the sentence's, else the markers decide
    joined = (tokens, [None, 0, 1, 1, 1, 1, None])  # "badlyfunnyfilm": one word
    assert not groups.group_masks(info, g, [joined])[groups.SENTIMENT].any()
    other = (["[CLS]", "x", "[SEP]"], [None, 0, None])
    assert groups.group_masks(info, g, [other])[groups.SENTIMENT].tolist() == (
        masks[groups.SENTIMENT].tolist()
    )


def test_vader_lexicon_from_the_installed_package() -> None:
    path = importlib.resources.files("vaderSentiment") / "vader_lexicon.txt"
    assert path.is_file()
    assert "\ncharmless\t-1.8\t" in path.read_text(encoding="utf-8")
    lexicon = groups.vader_lexicon()
    assert len(lexicon) > 7000
    assert lexicon["charmless"] == -1.8 and lexicon["good"] == 1.9 and lexicon[":)"] == 2.0


def test_vader_lexicon_missing_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(groups, "VADER_PACKAGE", "no_such_vader_package")
    with pytest.raises(ImportError, match=r"pip install vaderSentiment==3\.3\.2.*harness"):
        groups.vader_lexicon()


def test_parse_vader_lexicon_skips_broken_lines() -> None:
    text = "good\t1.9\t0.9\t[2, 2]\r\n:)\t2.0\t0.5\t[2, 2]\r\n"
    text += "broken line\r\nbad\t-2.5\t1.0\t[-3]\r\nodd\tx\r\n"
    assert groups.parse_vader_lexicon(text) == {"good": 1.9, ":)": 2.0, "bad": -2.5}


# ---------------------------------------------------------------------------- pictures
def test_concat_pads_and_keeps_every_sentence(tokenizer: Any) -> None:
    model = _encoder(tokenizer)
    parts = []
    for chunk in (SENTENCES[:1], SENTENCES[1:3]):
        enc = tokenizer(chunk, return_tensors="pt", padding=True)
        with pytest.warns(UserWarning):
            parts.append(explain_layers(model, enc, tokenizer=tokenizer, seed=0))
    both = run.concat_information(parts)
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
    assert run.concat_information([unknown, parts[1]]).evaluations is None


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_heatmap_writes_png_and_svg(info: LayerInformation, tmp_path: Path, suffix: str) -> None:
    path = plots.heatmap(info, 1, tmp_path / f"map{suffix}", title="tiny")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]
    if suffix == ".svg":  # the first sentence is shorter: its padding is not drawn
        plots.heatmap(info, 0, tmp_path / "short.svg")
        assert "[PAD]" not in (tmp_path / "short.svg").read_text()
    with pytest.raises(ValueError, match="png"):
        plots.heatmap(info, 0, tmp_path / "map.pdf")


def test_layers_html_one_row_per_layer_and_sentence(info: LayerInformation, tmp_path: Path) -> None:
    path = page.layers_html(info, None, tmp_path / "layers.html", "tiny <model>")
    text = path.read_text()
    assert text.count("<tr><td") == len(info.layers) * len(info.tokens)
    for name in info.layer_names():
        assert text.count(f"<b>{name}</b>") == len(info.tokens)  # its row in each sentence
    for n in range(len(info.tokens)):
        assert text.count(f"<b>sentence {n}</b>") == len(info.layers)
    # Captum's label columns renamed; the page is the shared shell (one stylesheet)
    assert "<th>Row maximum (nats)</th><th>Layer</th><th>Total nats</th>" in text
    assert "True Label" not in text and "Legend" not in text
    assert text.count("<style>") == 1 and '<div class="captum">' in text
    for word in ("great", "boring", "[CLS]"):
        assert word in text
    assert "[PAD]" not in text
    assert "tiny &lt;model&gt;" in text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", text)
    one = page.layers_html(info, [1], tmp_path / "one.html", "one").read_text()
    assert one.count("<tr><td") == len(info.layers)


def test_layers_html_escapes_tokens(tokenizer: Any, tmp_path: Path) -> None:
    enc = tokenizer(SENTENCES[3:], return_tensors="pt")
    with pytest.warns(UserWarning):
        info = explain_layers(_encoder(tokenizer), enc, tokenizer=tokenizer, seed=0)
    assert {"<", "&", ">"} <= set(info.tokens[0])
    text = page.layers_html(info, None, tmp_path / "x.html", "x").read_text()
    assert "&lt;" in text and "&amp;" in text and "&gt;" in text
    assert "< &" not in text and "> <" not in text
    # each token once per layer row, escaped once (not &amp;lt;)
    assert text.count(" &lt;") == len(info.layers) and "&amp;lt;" not in text


def test_layers_html_row_maximum_and_total(tmp_path: Path) -> None:
    values = torch.tensor([[[1.0, 4.0, float("nan")], [2.0, 2.0, 0.5]]])
    info = _values_info(values, [["a", "b", "c"]])
    text = page.layers_html(info, [0], tmp_path / "v.html", "v").read_text()
    rows = [r for r in text.split("<tr>") if r.startswith("<td")]
    assert len(rows) == 2
    assert "<b>max (4.00)</b>" in rows[0] and "<b>5.00</b>" in rows[0]  # NaN counts as 0
    assert "<b>max (2.00)</b>" in rows[1] and "<b>4.50</b>" in rows[1]
    # colours: the row's maximum full green, a NaN token uncoloured
    assert rows[0].count("hsl(120, 75%, 50%)") == 1 and "hsl(0, 75%, 100%)" in rows[0]
    assert rows[1].count("hsl(120, 75%, 50%)") == 2


def _index_inputs() -> tuple[dict[str, LayerInformation], Any, Any, dict[str, Any]]:
    """Two models on 30 sentences of a sentiment and a neutral word, and a third on 5."""
    gen = torch.Generator().manual_seed(0)
    values = 50.0 + 10.0 * torch.rand(30, 3, 2, generator=gen)
    tokens = [["good", "film"]] * 30
    infos = {
        "base": _values_info(values, tokens),
        "tuned <b>": _values_info(values * torch.tensor([1.0, 0.5]), tokens),
        "few": _values_info(values[:5], tokens[:5]),
    }
    g = groups.token_groups("sentiment", LEXICON)
    masks = {m: groups.group_masks(info, g) for m, info in infos.items()}
    means = {m: curves.group_curves(info, masks[m]) for m, info in infos.items()}
    summary = {
        "layer_names": infos["base"].layer_names(),
        "sentences": 30,
        "seconds": {"base": 1.234, "tuned <b>": 56.7, "few": 0.5},
        "seed": 0,
        "corpus_size": 0,
        "bootstrap": curves.bootstrap_curves(infos, masks, seed=0),
    }
    return infos, means, masks, summary


def test_write_index_tables_fit_and_show_intervals(tmp_path: Path) -> None:
    from comparisons.html import MAX_COLUMNS, fmt, interval

    infos, means, masks, summary = _index_inputs()
    page.write_index(tmp_path / "index.html", infos, means, masks, summary)
    text = (tmp_path / "index.html").read_text()
    boot = summary["bootstrap"]
    label = f"{groups.SENTIMENT} / {groups.OTHER}"
    # every model's mean with its interval, every ratio and paired change with its own
    for m in infos:
        for g in (groups.SENTIMENT, groups.OTHER):
            for j, (lo, hi) in enumerate(boot["curves"][m][g]):
                assert f">{interval(means[m][g][j], lo, hi)}</td>" in text, (m, g, j)
        for est, lo, hi in boot["ratios"][m][label]:
            assert f">{interval(est, lo, hi)}</td>" in text
    (change,) = boot["ratio_change"]  # "few" is on other sentences: not paired
    assert change == "tuned <b> − base"
    for est, lo, hi in boot["ratio_change"][change][label]:
        assert f">{interval(est, lo, hi)}</td>" in text
    assert "tuned &lt;b&gt; − base" in text and "<b> −" not in text
    assert "<b>tuned &lt;b&gt;</b> (56.7 s)" in text and f"({fmt(1.234)} s)" in text
    # tables through the shared macro, none wider than the page allows
    tables = re.findall(r"<table.*?</table>", text, flags=re.S)
    assert len(tables) == 3 + 1 + 1  # means per model, one ratio, the token counts
    for table in tables:
        assert table.startswith('<table class="data">')
        head = re.search(r"<thead>(.*?)</thead>", table, flags=re.S)
        assert head is not None and 2 <= head.group(1).count("<th") <= MAX_COLUMNS
    assert ">30</td>" in text  # 30 sentiment tokens per model
    assert "95 % percentile bootstrap intervals over sentences (2000 replicates" in text
    assert "fallback" in text  # corpus_size 0
    assert text.count("data:image/png;base64,") == 1 + 3 * 3
    assert 'href="tuned_b/layers.html"' in text and 'href="few/information.csv"' in text


def test_write_index_without_bootstrap(tmp_path: Path) -> None:
    from comparisons.html import DASH, fmt

    infos, means, masks, summary = _index_inputs()
    summary["bootstrap"] = None
    means["base"][groups.OTHER][1] = 0.0  # a ratio over 0: a dash, not an error
    page.write_index(tmp_path / "index.html", infos, means, masks, summary)
    text = (tmp_path / "index.html").read_text()
    ratio = means["tuned <b>"][groups.SENTIMENT][0] / means["tuned <b>"][groups.OTHER][0]
    assert f">{fmt(ratio)}</td>" in text and f">{fmt(means['few'][groups.OTHER][2])}</td>" in text
    assert f">{DASH}</td>" in text and "[" not in text.split("<h2>Mean")[1]  # no intervals
    assert "bootstrap intervals" not in text and " − base" not in text


def test_depth_curves_writes_png(tmp_path: Path) -> None:
    by_model = {
        "m1": {"a": [1.0, 2.0, 3.0], "b": [2.0, 1.0, float("nan")]},
        "m2": {"a": [3.0, 2.0, 1.0], "b": [1.0, 1.0, 1.0]},
    }
    path = plots.depth_curves(
        by_model, ["embeddings", "layer 1", "layer 2"], tmp_path / "c.png", "t"
    )
    assert path.read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------- uncertainty
def _all(info: LayerInformation) -> dict[str, torch.Tensor]:
    return {"all": info.mask & ~info.special}


def test_sentence_sums_add_up_to_mean_by_layer(info: LayerInformation) -> None:
    g = groups.token_groups("both", LEXICON)
    masks = groups.group_masks(info, g)
    sums, counts = curves.sentence_sums(info, masks)
    assert sums.shape == counts.shape == (2, len(g), len(info.layers))
    means = curves.group_curves(info, masks)
    # these sentences have no word pieces: the whole-word groups are the token groups
    for name, values in info.mean_by_layer(g).items():
        assert means[name] == pytest.approx(values, nan_ok=True)
    for k, name in enumerate(g):
        pooled = (sums[:, k].sum(0) / counts[:, k].sum(0)).tolist()
        assert pooled == pytest.approx(means[name], nan_ok=True)


def test_bootstrap_interval_of_a_mean_matches_normal_theory() -> None:
    # one token per sentence: the bootstrap distribution of the mean has sd s/sqrt(N)
    # (s with 1/N); with N = 400 it is normal to within a few thousandths of an sd, and
    # a percentile from B replicates has a Monte-Carlo sd of sqrt(p(1-p)/B)/phi(z)
    # bootstrap sds (0.060 for B = 2000): six of those is the tolerance.
    p = (1 - LEVEL) / 2
    z = float(sps.norm.ppf(1 - p))
    tolerance = 6 * math.sqrt(p * (1 - p) / BOOTSTRAP_RESAMPLES) / float(sps.norm.pdf(z))
    gen = torch.Generator().manual_seed(0)
    values = 100.0 + 10.0 * torch.randn(400, 1, 1, generator=gen, dtype=torch.float64)
    info = _values_info(values.float(), [["good"]] * 400)
    got = curves.bootstrap_curves({"m": info}, {"m": _all(info)}, seed=1)
    lo, hi = got["curves"]["m"]["all"][0]
    v = values.flatten().float().double()
    sd = float(v.std(unbiased=False)) / 400**0.5
    mean = float(v.mean())
    assert abs(lo - (mean - z * sd)) < tolerance * sd
    assert abs(hi - (mean + z * sd)) < tolerance * sd
    assert got["level"] == LEVEL and got["n_boot"] == BOOTSTRAP_RESAMPLES
    assert got["ratios"] == {}
    # the harness's bootstrap of the same sentences draws the same resamples
    _, lo_h, hi_h = bootstrap_means(v.numpy()[None], curves.BOOTSTRAP_KEY, 1)
    assert (lo, hi) == (float(lo_h[0]), float(hi_h[0]))


def test_bootstrap_ratio_of_proportional_groups_is_exact() -> None:
    # every sentence: the sentiment word keeps exactly twice what the other word keeps,
    # so every replicate's ratio is 2 and the interval collapses onto it
    gen = torch.Generator().manual_seed(0)
    other = 50.0 + 10.0 * torch.rand(30, 2, 1, generator=gen)
    values = torch.cat([2.0 * other, other], dim=-1)
    info = _values_info(values, [["good", "film"]] * 30)
    masks = groups.group_masks(info, groups.token_groups("sentiment", LEXICON))
    got = curves.bootstrap_curves({"m": info}, {"m": masks})
    (label,) = got["ratios"]["m"]
    assert label == f"{groups.SENTIMENT} / {groups.OTHER}"
    for est, lo, hi in got["ratios"]["m"][label]:
        assert est == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_bootstrap_pairs_models_on_the_same_sentences() -> None:
    gen = torch.Generator().manual_seed(0)
    values = 50.0 + 10.0 * torch.rand(20, 3, 2, generator=gen)
    tokens = [["good", "film"]] * 20
    g = groups.token_groups("sentiment", LEXICON)
    a, b = _values_info(values, tokens), _values_info(values.clone(), tokens)
    masks = {"a": groups.group_masks(a, g), "b": groups.group_masks(b, g)}
    same = curves.bootstrap_curves({"a": a, "b": b}, masks)
    assert same["curves"]["a"] == same["curves"]["b"]
    (change,) = same["ratio_change"].values()
    assert all(x == 0.0 for per_layer in change.values() for row in per_layer for x in row)
    # a model explained on other sentences is not paired with the first
    fewer = _values_info(values[:5], tokens[:5])
    masks["b"] = groups.group_masks(fewer, g)
    unpaired = curves.bootstrap_curves({"a": a, "b": fewer}, masks)
    assert unpaired["ratio_change"] == {}
    assert unpaired["curves"]["a"] == same["curves"]["a"]
    with pytest.raises(ValueError, match="no models"):
        curves.bootstrap_curves({}, {})


# ---------------------------------------------------------------------------- the study
def test_run_layers_two_models_writes_everything(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_lexicon() -> dict[str, float]:
        raise AssertionError("the lexicon was injected: the package's may not be read")

    monkeypatch.setattr(groups, "vader_lexicon", no_lexicon)
    models = {
        "base": (_encoder(tokenizer), tokenizer),
        "tuned/cls": (_classifier(tokenizer), tokenizer),
    }
    out = tmp_path / "out"
    got = run.run_layers(
        models, SENTENCES[:3], SENTENCES, out, groups="both", batch_size=2,
        cache_dir=tmp_path / "std", show_progress=False, lexicon=LEXICON,
    )  # fmt: skip
    assert list(got) == ["base", "tuned/cls"]
    for by_group in got.values():
        assert list(by_group) == [groups.SENTIMENT, groups.OTHER, groups.STOP, groups.CONTENT]
        assert all(len(v) == 4 and all(x == x for x in v) for v in by_group.values())
    for folder in ("base", "tuned_cls"):
        for name in ("information.json", "information.csv", "heatmap.png", "heatmap.svg"):
            assert (out / folder / name).stat().st_size > 0, (folder, name)
        info = LayerInformation.load(out / folder / "information.json")
        assert len(info.tokens) == 3 and info.meta["corpus_size"] == len(SENTENCES)
        assert set(info.normaliser.values()) == {"state_std"}
        html_page = (out / folder / "layers.html").read_text()
        assert html_page.count("<tr><td") == 3 * 4
    assert list((tmp_path / "std").glob("layer-std-*.pt"))
    assert (out / "depth_curves.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((out / "curves.json").read_text())
    assert summary["curves"] == got
    boot = summary["bootstrap"]
    assert set(boot) == {"level", "n_boot", "curves", "ratios", "ratio_change"}
    assert boot["n_boot"] == BOOTSTRAP_RESAMPLES
    for model, by_group in got.items():
        for group, values in by_group.items():
            for (lo, hi), v in zip(boot["curves"][model][group], values, strict=True):
                assert lo - 1e-9 <= v <= hi + 1e-9
        assert set(boot["ratios"][model]) == {
            f"{groups.SENTIMENT} / {groups.OTHER}",
            f"{groups.CONTENT} / {groups.STOP}",
        }
    assert set(boot["ratio_change"]) == {"tuned/cls − base"}
    index = (out / "index.html").read_text()
    assert "base" in index and "tuned/cls" in index
    assert index.count("data:image/png;base64,") == 1 + 2 * 3  # curves + 2 models × 3
    assert "fallback" not in index and "bootstrap intervals over sentences" in index
    assert "matched on whole words" in index
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", index)
    with pytest.raises(ValueError, match="2000 resamples"):
        run.run_layers(models, SENTENCES[:2], None, out, bootstrap=500, lexicon=LEXICON)


def test_run_layers_without_corpus_says_so(tokenizer: Any, tmp_path: Path) -> None:
    models = {"base": (_encoder(tokenizer), tokenizer)}
    with pytest.warns(UserWarning, match="no state_std"):
        got = run.run_layers(
            models, SENTENCES[:1], None, tmp_path, groups="stopwords", show_progress=False
        )
    assert list(got["base"]) == [groups.STOP, groups.CONTENT]
    assert "fallback" in (tmp_path / "index.html").read_text()
    assert json.loads((tmp_path / "curves.json").read_text())["bootstrap"] is None


def test_cli_layers_on_a_saved_model(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPTUM_PERTURB_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "tiny"
    _encoder(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t1\n" for s in SENTENCES))
    out = tmp_path / "out"
    argv = ["layers", "--file", str(data), "--n", "2", "--models", str(model_dir)]
    argv += ["--corpus", "0", "--groups", "both", "--out", str(out), "--threads", "1"]
    with pytest.warns(UserWarning, match="no state_std"):
        assert main(argv) == 0  # the VADER lexicon of the installed package
    folder = next(p for p in out.iterdir() if p.is_dir())
    info = LayerInformation.load(folder / "information.json")
    assert len(info.tokens) == 2
    assert info.tokens[0][1:4] == ["the", "film", "was"]
    index = (out / "index.html").read_text().replace("<wbr>", "")  # header breaks
    assert groups.SENTIMENT in index and "fallback" in index
    plain = tmp_path / "plain.txt"
    plain.write_text("the film was great !\n\n")
    assert run.read_sentence_file(plain) == ["the film was great !"]
