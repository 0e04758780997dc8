"""Train a small GPT-2 language model on SST-2: a real causal LM the comparisons can explain.

A seeded recipe (:class:`LMRecipe`) trains a byte-level BPE tokenizer and a
``GPT2LMHeadModel`` from scratch on the sentences of SST-2 ``train.tsv`` (the labels are
not used), each as ``<|endoftext|> sentence <|endoftext|>``, then measures its perplexity
on ``dev.tsv`` next to a unigram baseline. The result is cached by content hash (recipe,
training file), so each machine trains it once::

    python -m comparisons.models.language_model                 # the full recipe (about 16 min)
    python -m comparisons.models.language_model --recipe small  # the CI recipe (about 1 min)

Measured on the project's 2-core CPU (torch 2.13, shared with other jobs):

* ``full`` (4 layers, 256 wide, 4.2 M parameters, vocabulary 4,096; 3,000 steps of 64
  sentences, 2.85 epochs): 935 s of training on 2 threads; dev perplexity 201 per token
  against 807 for the unigram baseline (per word 1,780 against 12,637).
* ``small`` (2 layers, 128 wide, 0.68 M parameters, vocabulary 2,048; 24,000 sentences,
  one epoch, 750 steps): 40 s on 1 thread, 55 s on 2 busy ones; dev perplexity 261
  against 589.

Train rows are SST-2's phrases (9.4 words on average, many of them sentence fragments),
dev rows whole sentences (19.5 words), so the model often predicts the end of the text
early; see :data:`MIN_NEW_TOKENS`.

:func:`sst2_language_model` returns the cached folder, training first when it is missing;
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load it.
The cache lives in ``$CAPTUM_PERTURB_CACHE`` (default ``~/.cache/captum_perturb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from comparisons.models.finetune import (
    _batches,
    _file_digest,
    cache_root,
    save_trained,
    sst2_files,
    train_once,
)
from comparisons.models.resources import read_sentences

SPECIAL_TOKEN = "<|endoftext|>"
"""The one special token, used as BOS, EOS and PAD (id 0).

GPT-2's convention, kept on purpose: ``generate`` stops at it and pads with it, and no
never-predicted ``<pad>`` row joins the softmax. Sharing PAD with EOS is safe because the
loss masks padding by the attention mask, never by token id, so every real EOS is learned.
"""

FOLDER_PREFIX = "gpt2-sst2-"
N_CONTINUATIONS = 5
MAX_NEW_TOKENS = 24
MIN_NEW_TOKENS = 1
"""Greedy continuations may not end before this many new tokens. SST-2's training rows are
mostly phrases that stop anywhere, so after half a sentence EOS is often the likeliest next
token and a plain greedy decoder returns nothing; barring it for longer than one token
makes the model pad with junk (``. ' ' '``) where it would have ended."""


@dataclasses.dataclass(frozen=True)
class LMRecipe:
    """How the tokenizer and the language model are trained (every field enters the cache key).

    Attributes:
        n_train: sentences drawn (seeded, without replacement) from ``train.tsv``;
            ``None`` takes all 67,349. The tokenizer and the unigram baseline see the same.
        epochs: passes over them, cut short at ``max_steps`` when that is set.
        max_steps: optimizer steps at most (``None``: ``epochs`` full passes).
        batch_size: sentences per step, from length-sorted chunks of ``50 × batch_size``.
        lr: peak AdamW learning rate (linear warm-up, then cosine decay to ``min_lr``).
        min_lr: the fraction of ``lr`` the cosine ends at.
        warmup: fraction of the steps spent warming up.
        weight_decay: AdamW weight decay on weight matrices and embeddings (not on biases
            and LayerNorm).
        vocab_size: byte-level BPE vocabulary, the special token included.
        n_positions: context length; longer sentences are truncated (SST-2 has none).
        n_layer, n_embd, n_head: the GPT-2 shape.
        dropout: residual, embedding and attention dropout.
        seed: seeds the subset, the order and the initialisation.
    """

    n_train: int | None = None
    epochs: int = 3
    max_steps: int | None = 3000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 0.1
    warmup: float = 0.03
    weight_decay: float = 0.1
    vocab_size: int = 4096
    n_positions: int = 128
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    dropout: float = 0.1
    seed: int = 0


RECIPES = {
    "full": LMRecipe(),
    "small": LMRecipe(
        n_train=24_000,
        epochs=1,
        max_steps=None,
        batch_size=32,
        vocab_size=2048,
        n_layer=2,
        n_embd=128,
        n_head=4,
        dropout=0.0,
    ),
}


def content_key(recipe: LMRecipe, train_path: Path) -> str:
    """sha256 over the recipe and the training file (first 16 hex digits)."""
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    _file_digest(train_path, h)
    return h.hexdigest()[:16]


def train_tokenizer(sentences: list[str], vocab_size: int) -> Any:
    """A byte-level BPE on ``sentences`` as a ``PreTrainedTokenizerFast``.

    GPT-2's pre-tokenizer (no prefix space: ``decode`` gives the text back exactly, words
    after the first carry ``Ġ``). Encoding with special tokens prepends BOS; EOS is
    added by the caller. Training is deterministic given the sentences.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer)
    bos = (SPECIAL_TOKEN, tok.token_to_id(SPECIAL_TOKEN))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKEN} $A",
        pair=f"{SPECIAL_TOKEN} $A {SPECIAL_TOKEN} $B:1",
        special_tokens=[bos],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
    )


def encode_sentences(tokenizer: Any, sentences: list[str], max_length: int) -> list[list[int]]:
    """Each sentence as ``[BOS, *tokens, EOS]``, cut to ``max_length`` ids."""
    body = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [([bos, *ids, eos])[:max_length] for ids in body]


def _collate(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    return ids, mask


def build_model(recipe: LMRecipe, tokenizer: Any) -> Any:
    """A freshly initialised ``GPT2LMHeadModel`` (tied embeddings) for ``tokenizer``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    special = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=recipe.n_positions,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        resid_pdrop=recipe.dropout,
        embd_pdrop=recipe.dropout,
        attn_pdrop=recipe.dropout,
        bos_token_id=special,
        eos_token_id=special,
        pad_token_id=special,
    )
    model = GPT2LMHeadModel(config)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, special)
    return model


def _optimizer(model: Any, recipe: LMRecipe, total: int) -> tuple[Any, Any]:
    """AdamW (decay on matrices only) with linear warm-up and cosine decay over ``total``."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95))
    warm = max(1, int(recipe.warmup * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        done = min(1.0, (step - warm) / max(1, total - warm))
        return recipe.min_lr + (1 - recipe.min_lr) * 0.5 * (1 + math.cos(math.pi * done))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _schedule(
    sentences: list[str], recipe: LMRecipe, gen: torch.Generator
) -> tuple[list[list[int]], int]:
    """Batches of sentence indices for every step, and the number of batches per epoch."""
    rows = [(s, i) for i, s in enumerate(sentences)]
    epochs = [
        [[i for _, i in b] for b in _batches(rows, recipe.batch_size, gen)]
        for _ in range(recipe.epochs)
    ]
    steps = [b for epoch in epochs for b in epoch]
    return steps[: recipe.max_steps], len(epochs[0])


def train_loop(model: Any, seqs: list[list[int]], steps: list[list[int]], recipe: LMRecipe) -> dict:
    """Run the optimizer over ``steps``; returns losses, seconds and tokens seen."""
    from tqdm.auto import tqdm

    opt, sched = _optimizer(model, recipe, len(steps))
    pad = model.config.pad_token_id
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    model.train()
    bar = tqdm(steps, desc="training GPT-2 on SST-2", unit="batch", mininterval=5)
    for batch in bar:
        ids, mask = _collate([seqs[i] for i in batch], pad)
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(mask.sum())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}", refresh=False)
    model.eval()
    return {"seconds": time.perf_counter() - start, "losses": losses, "tokens": tokens}


@torch.no_grad()
def perplexity(model: Any, seqs: list[list[int]], batch_size: int = 64) -> tuple[float, int]:
    """Per-token perplexity of ``seqs`` (``[BOS, …, EOS]``) and the number of tokens scored.

    Every token after BOS is predicted from the ones before it: the sentence's tokens and
    EOS count, BOS does not.
    """
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    pad = model.config.pad_token_id
    nll, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        ids, mask = _collate([seqs[i] for i in order[start : start + batch_size]], pad)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll += float(
            torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="sum")
        )
        count += int(mask[:, 1:].sum())
    return math.exp(nll / count), count


def unigram_perplexity(train: list[list[int]], dev: list[list[int]], vocab_size: int) -> float:
    """Perplexity of ``dev`` under add-one-smoothed token frequencies of ``train``.

    Both are ``[BOS, …, EOS]`` sequences; as in :func:`perplexity`, BOS is neither counted
    nor scored.
    """
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for s in train:
        counts += torch.bincount(torch.tensor(s[1:]), minlength=vocab_size)
    logp = torch.log((counts + 1) / (counts.sum() + vocab_size))
    scored = torch.tensor([t for s in dev for t in s[1:]])
    return math.exp(-float(logp[scored].mean()))


@torch.no_grad()
def continuations(model: Any, tokenizer: Any, sentences: list[str]) -> list[dict[str, str]]:
    """Greedy continuations of the first half of the words of each sentence.

    At most :data:`MAX_NEW_TOKENS` new tokens, EOS barred before :data:`MIN_NEW_TOKENS`.
    """
    out = []
    for sentence in sentences:
        words = sentence.split()
        prompt = " ".join(words[: len(words) // 2])
        enc = tokenizer(prompt, return_tensors="pt")
        new = model.generate(
            **enc, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MIN_NEW_TOKENS, do_sample=False
        )
        text = tokenizer.decode(new[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        out.append({"prompt": prompt, "continuation": text, "reference": sentence})
    return out


def _train_sentences(recipe: LMRecipe, train_path: Path, gen: torch.Generator) -> list[str]:
    sentences = [s for s, _ in read_sentences(train_path)]
    if recipe.n_train is None:
        return sentences
    pick = torch.randperm(len(sentences), generator=gen)[: recipe.n_train].tolist()
    return [sentences[i] for i in pick]


def evaluate(
    model: Any, tokenizer: Any, train_seqs: list[list[int]], dev_sentences: list[str]
) -> dict[str, Any]:
    """Dev perplexity next to the unigram baseline's, and greedy continuations.

    Per token as in :func:`perplexity`, and per word (whitespace-separated, EOS counted as
    one), which compares across tokenizers: the same total log-likelihood over words.
    """
    dev = encode_sentences(tokenizer, dev_sentences, tokenizer.model_max_length)
    ppl, tokens = perplexity(model, dev)
    unigram = unigram_perplexity(train_seqs, dev, len(tokenizer))
    words = sum(len(s.split()) + 1 for s in dev_sentences)
    return {
        "dev_perplexity": ppl,
        "dev_unigram_perplexity": unigram,
        "dev_word_perplexity": math.exp(math.log(ppl) * tokens / words),
        "dev_unigram_word_perplexity": math.exp(math.log(unigram) * tokens / words),
        "dev_sentences": len(dev),
        "dev_tokens": tokens,
        "dev_words": words,
        "continuations": continuations(model, tokenizer, dev_sentences[:N_CONTINUATIONS]),
    }


def train(recipe: LMRecipe, out_dir: Path, train_path: Path, dev_path: Path) -> dict:
    """Train per ``recipe``; save model, tokenizer, ``recipe.json`` and ``metrics.json``."""
    import transformers

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    sentences = _train_sentences(recipe, train_path, gen)
    tokenizer = train_tokenizer(sentences, recipe.vocab_size)
    tokenizer.model_max_length = recipe.n_positions
    seqs = encode_sentences(tokenizer, sentences, recipe.n_positions)
    model = build_model(recipe, tokenizer)
    steps, per_epoch = _schedule(sentences, recipe, gen)
    run = train_loop(model, seqs, steps, recipe)
    dev = evaluate(model, tokenizer, seqs, [s for s, _ in read_sentences(dev_path)])
    metrics = {
        **dev,
        "train_seconds": run["seconds"],
        "steps": len(steps),
        "epochs": len(steps) / per_epoch,
        "train_sentences": len(seqs),
        "train_tokens": sum(len(s) - 1 for s in seqs),
        "tokens_seen": run["tokens"],
        "final_train_loss": sum(run["losses"][-100:]) / len(run["losses"][-100:]),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "recipe": dataclasses.asdict(recipe),
    }
    return save_trained(out_dir, model, tokenizer, recipe, metrics)


def sst2_language_model(
    recipe: LMRecipe | str = "full",
    *,
    train_path: Path | str | None = None,
    dev_path: Path | str | None = None,
    cache: Path | str | None = None,
) -> Path:
    """The trained language model's folder (``from_pretrained``-ready); trains it when missing.

    The folder is ``gpt2-sst2-<key>`` under ``cache`` (key: :func:`content_key`) and holds
    the model, its tokenizer, ``recipe.json`` and ``metrics.json``. Training happens in a
    temporary folder renamed into place at the end, so an interrupted run leaves no folder.

    Args:
        recipe: an :class:`LMRecipe` or the name of one in :data:`RECIPES`.
        train_path, dev_path: ``sentence<TAB>label`` files (default: SST-2 in
            :func:`~comparisons.models.resources.data_dir`).
        cache: the cache folder (default: :func:`~comparisons.models.finetune.cache_root`).
    """
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
        recipe = RECIPES[recipe]
    train_file, dev_file = sst2_files(train_path, dev_path)
    root = Path(cache) if cache is not None else cache_root()
    target = root / f"{FOLDER_PREFIX}{content_key(recipe, train_file)}"
    metrics = train_once(target, lambda tmp: train(recipe, tmp, train_file, dev_file))
    if metrics is None:
        return target
    print(
        f"dev perplexity {metrics['dev_perplexity']:.1f} (unigram "
        f"{metrics['dev_unigram_perplexity']:.1f}) after {metrics['train_seconds']:.0f} s "
        f"of training; saved to {target}"
    )
    return target


def load_language_model(recipe: str) -> tuple[Any, Any, Path]:
    """The SST-2 GPT-2 of ``recipe`` in eval mode (trained once and cached), its tokenizer
    and its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = sst2_language_model(recipe)
    model = AutoModelForCausalLM.from_pretrained(where).eval()
    return model, AutoTokenizer.from_pretrained(where), where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="full", choices=sorted(RECIPES))
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    where = sst2_language_model(args.recipe, cache=args.cache)
    m = json.loads((where / "metrics.json").read_text())
    print(where)
    print(
        f"dev perplexity {m['dev_perplexity']:.2f} per token over {m['dev_tokens']} tokens; "
        f"unigram baseline {m['dev_unigram_perplexity']:.2f}"
    )
    if "dev_word_perplexity" in m:  # folders cached by an earlier version lack it
        print(
            f"per word: {m['dev_word_perplexity']:.0f} (unigram "
            f"{m['dev_unigram_word_perplexity']:.0f})"
        )
    print(f"{m['steps']} steps in {m['train_seconds']:.0f} s of training")
    for c in m["continuations"]:
        print(f"  {c['prompt']} ⟶ {c['continuation']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
