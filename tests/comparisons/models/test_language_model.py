"""The GPT-2 language model trained on SST-2 (:mod:`comparisons.models.language_model`), slow.

Uses the ``small`` recipe trained once per session (``sst2_small_lm``), then checks the
folder loads through the ``Auto*`` classes, the tokenizer's BOS handling, the recorded
perplexity against the unigram baseline (and against a recomputation from the saved
model), the cache hit, generation and the cache key.

Cost on the project's 2-core CPU with one thread: 46 s in all, 40 s of it training.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from comparisons.models import language_model
from comparisons.models.language_model import (
    FOLDER_PREFIX,
    N_CONTINUATIONS,
    RECIPES,
    content_key,
    encode_sentences,
    perplexity,
    sst2_language_model,
)
from comparisons.models.resources import read_sentences

pytestmark = pytest.mark.slow

SMALL_STEPS = 750
"""24,000 sentences in batches of 32, cut per length-sorted chunk of 1,600: 15 × 50."""

MAX_PERPLEXITY_RATIO = 0.8
"""The small model's dev perplexity may be at most this fraction of the unigram baseline's.

Measured here: 261 against 589, a ratio of 0.44 (torch 2.13.0+cpu, 1 or 2
threads alike). A model that learned only token frequencies scores the unigram
perplexity (ratio about 1), and an untrained one about the vocabulary size (2,048, ratio
above 3), so 0.8 separates "uses the context" from both while leaving a wide margin for
another torch build or thread count."""


@pytest.fixture(scope="module")
def lm_dir(sst2_small_lm: Path) -> Path:
    """The small recipe's folder, trained once per session into the default cache
    (``tests/conftest.py``), shared with the LLM docs and study tests."""
    return sst2_small_lm


@pytest.fixture(scope="module")
def lm_cache(lm_dir: Path) -> Path:
    return lm_dir.parent


@pytest.fixture(scope="module")
def metrics(lm_dir: Path) -> dict:
    return json.loads((lm_dir / "metrics.json").read_text(encoding="utf-8"))


def test_folder_loads_with_the_auto_classes(lm_dir: Path, sst2_train_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert lm_dir.name == FOLDER_PREFIX + content_key(RECIPES["small"], sst2_train_path)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    assert model.config.model_type == "gpt2"
    assert model.config.vocab_size == len(tokenizer) == RECIPES["small"].vocab_size
    special = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert ids == (special, special, special)
    assert model.config.eos_token_id == model.generation_config.eos_token_id == special
    assert model.config.pad_token_id == model.generation_config.pad_token_id == special
    recipe = json.loads((lm_dir / "recipe.json").read_text(encoding="utf-8"))
    assert recipe == dataclasses.asdict(RECIPES["small"])


def test_tokenizer_prepends_bos_only_with_special_tokens(lm_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    text = "a charming and often affecting journey ."
    plain = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.encode(text) == [tokenizer.bos_token_id, *plain]
    assert tokenizer(text)["input_ids"] == [tokenizer.bos_token_id, *plain]
    assert tokenizer.bos_token_id not in plain
    tokens = tokenizer.convert_ids_to_tokens(plain)
    assert tokens[0] == "a" and "Ġcharming" in tokens  # byte-level: Ġ marks a space
    assert tokenizer.decode(plain) == text
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == text


def test_dev_perplexity_is_clearly_below_the_unigram_baseline(metrics: dict) -> None:
    ppl, unigram = metrics["dev_perplexity"], metrics["dev_unigram_perplexity"]
    assert math.isfinite(ppl) and ppl > 1
    assert ppl <= MAX_PERPLEXITY_RATIO * unigram, (ppl, unigram)
    assert metrics["steps"] == SMALL_STEPS
    assert metrics["train_sentences"] == RECIPES["small"].n_train
    assert metrics["dev_sentences"] == 872
    assert metrics["dev_tokens"] > metrics["dev_sentences"]  # EOS and ≥ 1 token each
    assert metrics["recipe"] == dataclasses.asdict(RECIPES["small"])


def test_recorded_perplexity_matches_the_saved_model(
    lm_dir: Path, metrics: dict, sst2_dev_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    dev = encode_sentences(tokenizer, [s for s, _ in read_sentences(sst2_dev_path)], 128)
    ppl, count = perplexity(model, dev)
    assert count == metrics["dev_tokens"] == sum(len(s) - 1 for s in dev)
    assert ppl == pytest.approx(metrics["dev_perplexity"], rel=1e-4)


def test_second_call_returns_the_cached_folder_without_training(
    lm_dir: Path,
    lm_cache: Path,
    sst2_train_path: Path,
    sst2_dev_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_training(*args: object, **kwargs: object) -> dict:
        raise AssertionError("trained again instead of using the cache")

    monkeypatch.setattr(language_model, "train", no_training)
    again = sst2_language_model(
        "small", train_path=sst2_train_path, dev_path=sst2_dev_path, cache=lm_cache
    )
    assert again == lm_dir
    assert not list(lm_cache.glob(".training-*"))


def test_a_failed_training_leaves_no_folder(
    lm_dir: Path,
    lm_cache: Path,
    sst2_train_path: Path,
    sst2_dev_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> dict:
        raise RuntimeError("boom")

    monkeypatch.setattr(language_model, "train", broken)
    before = sorted(p.name for p in lm_cache.iterdir())
    other = dataclasses.replace(RECIPES["small"], seed=1)
    with pytest.raises(RuntimeError, match="boom"):
        sst2_language_model(
            other, train_path=sst2_train_path, dev_path=sst2_dev_path, cache=lm_cache
        )
    assert sorted(p.name for p in lm_cache.iterdir()) == before


def test_greedy_generation_from_a_dev_prompt_returns_new_tokens(
    lm_dir: Path, metrics: dict, sst2_dev_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    sentence = read_sentences(sst2_dev_path, limit=1, start=3)[0][0]
    prompt = " ".join(sentence.split()[:6])
    enc = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    width = enc["input_ids"].shape[1]
    assert out.shape == (1, width + 6)
    assert tokenizer.decode(out[0, width:], skip_special_tokens=True).strip()
    assert len(metrics["continuations"]) == N_CONTINUATIONS
    for c in metrics["continuations"]:
        assert c["reference"].startswith(c["prompt"]) and c["continuation"]


def test_the_cache_key_follows_the_recipe_and_the_training_file(
    sst2_train_path: Path, tmp_path: Path
) -> None:
    small = RECIPES["small"]
    key = content_key(small, sst2_train_path)
    assert key == content_key(dataclasses.replace(small), sst2_train_path)
    assert key != content_key(dataclasses.replace(small, seed=1), sst2_train_path)
    assert key != content_key(dataclasses.replace(small, n_layer=3), sst2_train_path)
    assert key != content_key(RECIPES["full"], sst2_train_path)
    edited = tmp_path / "train.tsv"
    edited.write_bytes(sst2_train_path.read_bytes() + b"one more sentence\t1\n")
    assert key != content_key(small, edited)
