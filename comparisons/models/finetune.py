"""Fine-tune the packaged MiniLM on SST-2: the real classifier the comparisons explain.

A seeded recipe (:class:`Recipe`) trains ``BertForSequenceClassification`` from the
packaged MiniLM on a random subset of SST-2 ``train.tsv`` and prints its accuracy on
``dev.tsv``. The result is cached by content hash (recipe, training file, base weights),
so each machine trains it once::

    python -m comparisons.models.finetune                 # full recipe (~12 min, 2 cores)
    python -m comparisons.models.finetune --recipe small  # the CI recipe (about 2 min)

:func:`sst2_classifier` returns the cached folder, training first when it is missing.
The cache lives in ``$CAPTUM_PERTURB_CACHE`` (default ``~/.cache/captum_perturb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comparisons.models.resources import data_dir, packaged_minilm_dir, read_sentences

CACHE_ENV_VAR = "CAPTUM_PERTURB_CACHE"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the classifier is trained (every field enters the cache key).

    Attributes:
        n_train: examples drawn (seeded, without replacement) from ``train.tsv``.
        epochs: passes over them.
        batch_size: examples per step; batches are built from length-sorted chunks of
            ``50 × batch_size`` shuffled examples, so padding stays small.
        lr: peak AdamW learning rate (linear warm-up, then linear decay to 0).
        warmup: fraction of the steps spent warming up.
        weight_decay: AdamW weight decay (not on biases and LayerNorm).
        max_length: truncation length in word pieces.
        seed: seeds the subset, the order and the new head's initialisation.
    """

    n_train: int = 40_000
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 66
    seed: int = 0


RECIPES = {"full": Recipe(), "small": Recipe(n_train=6_000, epochs=1)}


def cache_root() -> Path:
    """``$CAPTUM_PERTURB_CACHE`` or ``~/.cache/captum_perturb``."""
    default = Path.home() / ".cache" / "captum_perturb"
    return Path(os.environ.get(CACHE_ENV_VAR, default))


def _file_digest(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def content_key(recipe: Recipe, train_path: Path, base_dir: Path) -> str:
    """sha256 over the recipe, the training file and every file of the base model."""
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    _file_digest(train_path, h)
    for p in sorted(base_dir.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(base_dir)).encode())
            _file_digest(p, h)
    return h.hexdigest()[:16]


def sst2_files(train_path: Path | str | None, dev_path: Path | str | None) -> tuple[Path, Path]:
    """SST-2's train and dev files: the given paths, else those of
    :func:`~comparisons.models.resources.data_dir`.

    Raises:
        FileNotFoundError: a file is missing (names it and the variable to set).
    """
    train_file = Path(train_path) if train_path else data_dir() / "sst2" / "train.tsv"
    dev_file = Path(dev_path) if dev_path else data_dir() / "sst2" / "dev.tsv"
    for p in (train_file, dev_file):
        if not p.exists():
            raise FileNotFoundError(
                f"{p} not found: set CAPTUM_PERTURB_DATA to the folder of sst2/"
            )
    return train_file, dev_file


def train_once(target: Path, train_into: Callable[[Path], dict]) -> dict | None:
    """Run ``train_into`` on a temporary folder beside ``target``, then rename it to
    ``target`` (so a crash never leaves a half-written model there).

    Returns:
        The training's metrics, or None when ``target`` already holds a finished run
        (its ``metrics.json``) — also when another process finished it first.
    """
    if (target / "metrics.json").exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".training-", dir=target.parent))
    try:
        metrics = train_into(tmp)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / "metrics.json").exists():  # another process finished first
            return None
        raise
    return metrics


def save_trained(out_dir: Path, model: Any, tokenizer: Any, recipe: Any, metrics: dict) -> dict:
    """Save a trained model, its tokenizer, ``recipe.json`` and ``metrics.json`` (written
    last: its presence marks a finished run, see :func:`train_once`); returns ``metrics``."""
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _batches(
    rows: list[tuple[str, int]], batch_size: int, gen: torch.Generator
) -> list[list[tuple[str, int]]]:
    order = torch.randperm(len(rows), generator=gen).tolist()
    chunk = 50 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted((rows[i] for i in order[start : start + chunk]), key=lambda r: len(r[0]))
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


@torch.no_grad()
def accuracy(
    model: Any, tokenizer: Any, rows: list[tuple[str, int]], batch_size: int = 64
) -> float:
    """Fraction of ``rows`` whose argmax logit equals the label (model in eval mode)."""
    model.eval()
    correct = 0
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        enc = tokenizer([s for s, _ in part], padding=True, truncation=True, return_tensors="pt")
        pred = model(**enc).logits.argmax(-1)
        correct += int((pred == torch.tensor([y for _, y in part])).sum())
    return correct / len(rows)


def _optimizer(
    model: Any, recipe: Recipe, total: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on biases and LayerNorm) with linear warm-up then linear decay."""
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    ids = {id(p) for p in no_decay}
    decay = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
    )
    warm = max(1, int(recipe.warmup * total))

    def lr_at(step: int) -> float:
        return step / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _fit(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    batches: list[list[tuple[str, int]]],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
) -> None:
    """One optimiser step per batch, the loss shown on a progress bar."""
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(batches, desc="fine-tuning MiniLM on SST-2", unit="batch")
    for batch in bar:
        enc = tokenizer(
            [s for s, _ in batch],
            padding=True,
            truncation=True,
            max_length=recipe.max_length,
            return_tensors="pt",
        )
        labels = torch.tensor([y for _, y in batch])
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if math.isfinite(loss.item()):
            bar.set_postfix(loss=f"{loss.item():.3f}")


def train(recipe: Recipe, out_dir: Path, base_dir: Path, train_path: Path, dev_path: Path) -> dict:
    """Train per ``recipe`` and save model, tokenizer, ``recipe.json`` and ``metrics.json``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=2)
    rows = read_sentences(train_path)
    pick = torch.randperm(len(rows), generator=gen)[: recipe.n_train].tolist()
    rows = [rows[i] for i in pick]
    batches = [b for _ in range(recipe.epochs) for b in _batches(rows, recipe.batch_size, gen)]
    opt, sched = _optimizer(model, recipe, len(batches))
    start = time.perf_counter()
    _fit(model, tokenizer, recipe, batches, opt, sched)
    train_seconds = time.perf_counter() - start
    model.eval()
    dev_acc = accuracy(model, tokenizer, read_sentences(dev_path))
    metrics = {
        "dev_accuracy": dev_acc,
        "train_seconds": train_seconds,
        "steps": len(batches),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return save_trained(out_dir, model, tokenizer, recipe, metrics)


def sst2_classifier(
    recipe: Recipe | str = "full",
    *,
    base_dir: Path | str | None = None,
    train_path: Path | str | None = None,
    dev_path: Path | str | None = None,
    cache: Path | str | None = None,
) -> Path:
    """The fine-tuned classifier's folder (``from_pretrained``-ready); trains it when missing.

    Args:
        recipe: a :class:`Recipe` or the name of one in :data:`RECIPES`.
        base_dir: the encoder to start from (default: the packaged MiniLM).
        train_path, dev_path: ``sentence<TAB>label`` files (default: SST-2 in
            :func:`~comparisons.models.resources.data_dir`).
        cache: the cache folder (default: :func:`cache_root`).
    """
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
        recipe = RECIPES[recipe]
    base = Path(base_dir) if base_dir is not None else packaged_minilm_dir()
    train_file, dev_file = sst2_files(train_path, dev_path)
    root = Path(cache) if cache is not None else cache_root()
    target = root / f"minilm-sst2-{content_key(recipe, train_file, base)}"
    metrics = train_once(target, lambda tmp: train(recipe, tmp, base, train_file, dev_file))
    if metrics is None:
        return target
    print(
        f"dev accuracy {metrics['dev_accuracy']:.4f} after {metrics['train_seconds']:.0f} s "
        f"of training; saved to {target}"
    )
    return target


def load_classifier(where: Path | None) -> tuple[nn.Module, Any]:
    """The SST-2 classifier in ``where``, default the fine-tuned MiniLM (trained if missing)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    where = sst2_classifier("full") if where is None else where
    model = AutoModelForSequenceClassification.from_pretrained(str(where)).eval()
    return model, AutoTokenizer.from_pretrained(str(where))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="full", choices=sorted(RECIPES))
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    where = sst2_classifier(args.recipe, cache=args.cache)
    metrics = json.loads((where / "metrics.json").read_text())
    print(f"{where}\ndev accuracy: {metrics['dev_accuracy']:.4f}")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
