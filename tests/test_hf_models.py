"""Tiny random Hugging Face models with padded batches.

Each model is built from a config with a fixed seed (hidden 32, 2 layers, vocabulary
100), in eval mode. Rows of the batch have 7, 5 and 3 real tokens, padding at the end.
Noise goes on the embedding layer (token ids in) or on ``inputs_embeds`` while an
encoder block's output is explained; in both cases padded positions must be neither
perturbed nor counted, so a sentence explained alone (unpadded) gets the same σ as
inside the padded batch, within the Monte-Carlo tolerance of ``contract.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from contract import assert_log_sigma_close, assert_no_hooks, one_thread
from torch import Tensor, nn

from captum_perturb import (
    LayerPerturbationEntropyAttribution,
    PerturbationEntropyAttribution,
    estimate_state_std,
)

transformers = pytest.importorskip("transformers")

HIDDEN = 32
LENGTHS = (7, 5, 3)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


@dataclass
class Spec:
    build: Callable[[], nn.Module]
    embeddings: Callable[[nn.Module], nn.Module]
    block: Callable[[nn.Module], nn.Module]
    base: Callable[[nn.Module], nn.Module]
    pad_id: int


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(cfg)


def _roberta() -> nn.Module:
    cfg = transformers.RobertaConfig(
        vocab_size=100,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        num_labels=3,
        pad_token_id=1,
    )
    return transformers.RobertaForSequenceClassification(cfg)


def _distilbert() -> nn.Module:
    cfg = transformers.DistilBertConfig(
        vocab_size=100,
        dim=HIDDEN,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=32,
        num_labels=3,
    )
    return transformers.DistilBertForSequenceClassification(cfg)


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=100,
        n_embd=HIDDEN,
        n_layer=2,
        n_head=2,
        n_positions=32,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return transformers.GPT2ForSequenceClassification(cfg)


SPECS = {
    "bert": Spec(
        _bert, lambda m: m.bert.embeddings, lambda m: m.bert.encoder.layer[0], lambda m: m.bert, 0
    ),
    "roberta": Spec(
        _roberta,
        lambda m: m.roberta.embeddings,
        lambda m: m.roberta.encoder.layer[0],
        lambda m: m.roberta,
        1,
    ),
    "distilbert": Spec(
        _distilbert,
        lambda m: m.distilbert.embeddings,
        lambda m: m.distilbert.transformer.layer[0],
        lambda m: m.distilbert,
        0,
    ),
    "gpt2": Spec(
        _gpt2, lambda m: m.transformer.wte, lambda m: m.transformer.h[0], lambda m: m.transformer, 0
    ),
}


@pytest.fixture(scope="module", params=list(SPECS))
def hf(request: pytest.FixtureRequest) -> tuple[Spec, nn.Module]:
    spec = SPECS[request.param]
    torch.manual_seed(0)
    return spec, spec.build().eval()


def padded_batch(pad_id: int, n: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Ids (n, 7) with real tokens in 5..99 and padding at the end; the attention mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, max(LENGTHS)), generator=gen)
    lengths = torch.tensor([LENGTHS[i % len(LENGTHS)] for i in range(n)])
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    return torch.where(mask.bool(), ids, torch.full_like(ids, pad_id)), mask


def assert_padding_untouched(res: Any, mask: Tensor) -> None:
    attr, sigma = res.attributions, res.sigma
    pad = ~mask.bool()
    assert bool((attr[pad] == 0).all()), "padded positions must get attribution 0"
    assert bool(sigma[pad].isnan().all()), "padded positions must get σ NaN"
    assert bool(torch.isfinite(sigma[~pad]).all())
    assert bool((attr[~pad] > 0).any()), "some real token must be encoded"
    torch.testing.assert_close((res.group_ids >= 0).sum(1), mask.sum(1))


def logits_fn(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def test_layer_on_embeddings_padding_and_alone(hf: tuple[Spec, nn.Module]) -> None:
    spec, model = hf
    ids, mask = padded_batch(spec.pad_id)
    forward = logits_fn(model)
    corpus, corpus_mask = padded_batch(spec.pad_id, n=24, seed=2)
    target = [2, 0, 1]
    std = estimate_state_std(forward, corpus, (corpus_mask,), target=0)
    assert std.shape == () and float(std) > 0
    layer = spec.embeddings(model)
    lpe = LayerPerturbationEntropyAttribution(forward, layer)
    kwargs: dict[str, Any] = {"state_std": std, "sigma_max": 2.0}
    res = lpe.explain(ids, target, (mask,), attention_mask=mask, **kwargs)
    assert res.attributions.shape == (3, max(LENGTHS), HIDDEN)
    assert_padding_untouched(res, mask)
    for i, n in enumerate(LENGTHS):
        alone = lpe.explain(ids[i : i + 1, :n], [target[i]], (mask[i : i + 1, :n],), **kwargs)
        # the claim "batch == alone within the reported errors" is made for estimates that
        # met the stopping rule; an unconverged one says so (flag and warning) instead —
        # e.g. the tiny random GPT-2's classifier reads the last token, so the earlier
        # tokens' effects are marginal and noisy
        if bool(res.converged[i]) and bool(alone.converged[0]):
            assert_log_sigma_close(res, i, alone, 0)
    assert_no_hooks(model)
    assert not model.training


def test_default_sigma_max_from_word_embeddings(hf: tuple[Spec, nn.Module]) -> None:
    spec, model = hf
    ids, mask = padded_batch(spec.pad_id)
    layer = spec.embeddings(model)
    res = LayerPerturbationEntropyAttribution(logits_fn(model), layer).explain(
        ids, 1, (mask,), attention_mask=mask, state_std=torch.tensor(1.0)
    )
    assert res.sigma_max_source == "word embeddings"
    words = layer if isinstance(layer, nn.Embedding) else layer.word_embeddings
    expected = 10 * words.weight.detach().std()
    torch.testing.assert_close(res.estimate.sigma_max, expected.expand(3))


def test_inputs_embeds_with_block_state(hf: tuple[Spec, nn.Module]) -> None:
    spec, model = hf
    base, block = spec.base(model), spec.block(model)
    words = base.get_input_embeddings()

    def forward(embeds: Tensor, mask: Tensor) -> Any:
        return base(inputs_embeds=embeds, attention_mask=mask)

    ids, mask = padded_batch(spec.pad_id)
    corpus, corpus_mask = padded_batch(spec.pad_id, n=24, seed=2)
    with torch.no_grad():
        embeds, corpus_embeds = words(ids), words(corpus)
    std = estimate_state_std(
        forward, corpus_embeds, (corpus_mask,), state_layer=block, attention_mask=corpus_mask
    )
    assert std.shape == (HIDDEN,)
    pe = PerturbationEntropyAttribution(forward)
    kwargs: dict[str, Any] = {"layer": block, "state_std": std, "sigma_max": 5.0}
    res = pe.explain(embeds, None, (mask,), "token", attention_mask=mask, **kwargs)
    assert res.attributions.shape == embeds.shape
    assert_padding_untouched(res, mask)
    for i, n in enumerate(LENGTHS):
        alone = pe.explain(embeds[i : i + 1, :n], None, (mask[i : i + 1, :n],), "token", **kwargs)
        assert_log_sigma_close(res, i, alone, 0)
    assert_no_hooks(model)


def test_estimate_state_std_skips_padding(hf: tuple[Spec, nn.Module]) -> None:
    spec, model = hf
    base, block = spec.base(model), spec.block(model)
    words = base.get_input_embeddings()

    def forward(embeds: Tensor, mask: Tensor) -> Any:
        return base(inputs_embeds=embeds, attention_mask=mask)

    ids, mask = padded_batch(spec.pad_id, n=12, seed=3)
    with torch.no_grad():
        embeds = words(ids)
    # reference: the block's output of every sentence alone, unpadded
    states = []
    with torch.no_grad():
        for i in range(len(ids)):
            n = int(mask[i].sum())
            out = block_output(forward, block, embeds[i : i + 1, :n], mask[i : i + 1, :n])
            states.append(out[0].double())
    expected = {
        "mean": torch.stack([s.mean(0) for s in states]).std(0, unbiased=False).float(),
        "pool": torch.cat(states).std(0, unbiased=False).float(),
    }
    noisy = torch.where(mask.bool()[..., None], embeds, 50 * torch.randn_like(embeds))
    for reduction, ref in expected.items():
        kwargs: dict[str, Any] = {
            "layer": block,
            "attention_mask": mask,
            "token_reduction": reduction,
        }
        std = estimate_state_std(forward, embeds, (mask,), batch_size=5, **kwargs)
        assert std.shape == (HIDDEN,)
        torch.testing.assert_close(std, ref, rtol=1e-4, atol=1e-5)
        # what sits at padded positions does not matter
        again = estimate_state_std(forward, noisy, (mask,), **kwargs)
        torch.testing.assert_close(again, std, rtol=1e-4, atol=1e-5)
    default = estimate_state_std(forward, embeds, (mask,), state_layer=block, attention_mask=mask)
    torch.testing.assert_close(default, expected["mean"], rtol=1e-4, atol=1e-5)


def block_output(forward: Callable[..., Any], block: nn.Module, *args: Tensor) -> Tensor:
    seen: list[Tensor] = []

    def grab(module: nn.Module, inputs: Any, out: Any) -> None:
        seen.append(out if isinstance(out, Tensor) else out[0])

    handle = block.register_forward_hook(grab)
    try:
        forward(*args)
    finally:
        handle.remove()
    return seen[0]
