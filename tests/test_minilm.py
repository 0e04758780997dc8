"""The paper's BERT tutorial on the real all-MiniLM-L6-v2 (``method.md``, known outputs).

Noise on the output of ``model.embeddings``; the explained state is the output of the
third encoder layer; σ_S comes from the first 100 SST-2 dev sentences; rate 0.1 and the
default σ_max (10 × the std of the word embeddings). On MiniLM the same settings as the
paper's BERT give "rare" and "memorable" among the smallest σ.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from contract import assert_no_hooks, one_thread
from torch import Tensor

from captum_perturb import LayerPerturbationEntropyAttribution, estimate_state_std

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

SENTENCE = "rare bird has more than enough charm to make it memorable ."
N_CORPUS = 100


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> tuple[Any, Any]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    return tokenizer, model


def forward_fn(model: Any) -> Any:
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.fixture(scope="module")
def state_std(minilm: tuple[Any, Any], sst2_dev_path: Path) -> Tensor:
    tokenizer, model = minilm
    with sst2_dev_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [r["sentence"] for r in rows[:N_CORPUS]]
    assert len(sentences) == N_CORPUS
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    assert bool((enc["attention_mask"] == 0).any()), "the corpus batch is padded"
    return estimate_state_std(
        forward_fn(model),
        enc["input_ids"],
        (enc["attention_mask"],),
        state_layer=model.encoder.layer[2],
        attention_mask=enc["attention_mask"],
    )


def test_state_std_of_layer_three(
    minilm: tuple[Any, Any], state_std: Tensor, sst2_dev_path: Path, minilm_dir: Path
) -> None:
    """σ_S against an independent computation: Hugging Face's own ``hidden_states[3]`` (the
    output of the third encoder layer) of each sentence run alone (no padding at all),
    averaged over its tokens, then the population std across the 100 sentences. The two
    differ only by float32 round-off of the padded batched pass (relative ~1e-6 on each
    state, ~1e-5 after the moments): rtol 1e-4. A model of its own: Hugging Face installs
    hooks to collect ``hidden_states`` and keeps them, which the shared model must not
    carry into the hook checks of the next test."""
    tokenizer, shared = minilm
    assert state_std.shape == (shared.config.hidden_size,)
    model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    with sst2_dev_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    means = []
    with torch.no_grad():
        for row in rows[:N_CORPUS]:
            enc = tokenizer(row["sentence"], return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            means.append(out.hidden_states[3][0].double().mean(0))
    expected = torch.stack(means).std(0, correction=0)
    torch.testing.assert_close(state_std.double(), expected, rtol=1e-4, atol=0.0)


def test_rare_and_memorable_are_encoded(minilm: tuple[Any, Any], state_std: Tensor) -> None:
    tokenizer, model = minilm
    enc = tokenizer(SENTENCE, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    lpe = LayerPerturbationEntropyAttribution(forward_fn(model), model.embeddings)
    res = lpe.explain(
        ids,
        None,
        (mask,),
        state_layer=model.encoder.layer[2],
        attention_mask=mask,
        rate=0.1,
        state_std=state_std,
    )
    assert res.sigma_max_source == "word embeddings"
    expected_max = 10 * model.embeddings.word_embeddings.weight.detach().std()
    torch.testing.assert_close(res.estimate.sigma_max, expected_max.reshape(1))
    assert res.attributions.shape == (1, len(tokens), model.config.hidden_size)
    sigma = res.estimate.sigma[0]
    assert sigma.shape == (len(tokens),)
    torch.testing.assert_close(res.group_ids[0], torch.arange(len(tokens)))
    special = set(tokenizer.all_special_tokens)
    words = [(float(s), t) for s, t in zip(sigma, tokens, strict=True) if t not in special]
    assert len(words) == len(SENTENCE.split()), tokens
    smallest = [t for _, t in sorted(words)[:4]]
    assert "rare" in smallest and "memorable" in smallest, sorted(words)
    assert_no_hooks(model)
    assert not model.training
