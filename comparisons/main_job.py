"""The main job on the embedded default: explain a sentence with the packaged MiniLM.

For each explained layer (default: layer 3, the paper's BERT tutorial, and the last
layer) the noise goes on the output of ``model.embeddings`` and the explained state is
that layer's full ``[tokens × 384]`` output, normalised by σ_S from SST-2 dev
sentences (or, without the data, the reference fallback). Writes

* ``explanation.html`` — one Captum ``visualize_text`` row per layer,
* ``explanation.png`` — a tokens × layers heatmap of the nats each layer keeps,
* ``explanation.json`` — σ, entropies and nats per token and layer.

Run ``python -m comparisons.main_job --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from captum_perturb import LayerPerturbationEntropyAttribution, estimate_state_std
from comparisons.resources import TUTORIAL_SENTENCE, load_encoder, sst2_dev


def explain_layers(
    model: Any,
    tokenizer: Any,
    sentence: str,
    layers: list[int],
    corpus: list[str] | None,
    rate: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """σ per token for each 1-based encoder ``layer`` (noise on ``model.embeddings``)."""
    enc = tokenizer([sentence], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]

    def forward(i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return model(input_ids=i, attention_mask=m).last_hidden_state

    lpe = LayerPerturbationEntropyAttribution(forward, model.embeddings)
    out: dict[str, Any] = {
        "sentence": sentence,
        "tokens": tokenizer.convert_ids_to_tokens(ids[0]),
        "layers": {},
    }
    for k in layers:
        block = model.encoder.layer[k - 1]
        std = None
        if corpus:
            cenc = tokenizer(corpus, return_tensors="pt", padding=True)
            std = estimate_state_std(
                forward,
                cenc["input_ids"],
                (cenc["attention_mask"],),
                layer=block,
                attention_mask=cenc["attention_mask"],
            )
        start = time.perf_counter()
        res = lpe.explain(
            ids,
            additional_forward_args=(mask,),
            state_layer=block,
            state_std=std,
            rate=rate,
            seed=seed,
        )
        seconds = time.perf_counter() - start
        out["layers"][str(k)] = {
            "sigma": res.estimate.sigma[0].tolist(),
            "entropy": res.estimate.entropy[0].tolist(),
            "nats_kept": res.estimate.information[0].tolist(),
            "sigma_max": float(res.estimate.sigma_max[0]),
            "converged": bool(res.converged[0]),
            "normaliser": res.normaliser,
            "seconds": seconds,
        }
    return out


def write_html(result: dict[str, Any], path: Path) -> None:
    """One Captum ``visualize_text`` row per layer, in a self-contained page."""
    from captum.attr import visualization as viz

    records = []
    for k, layer in result["layers"].items():
        nats = torch.tensor(layer["nats_kept"])
        scores = nats / nats.max().clamp_min(1e-12)  # visualize_text clips to [-1, 1]
        records.append(
            viz.VisualizationDataRecord(
                scores,
                0.0,
                f"layer {k}",
                "-",
                "nats kept",
                float(nats.sum()),
                result["tokens"],
                float(layer["converged"]),
            )
        )
    with contextlib.redirect_stdout(io.StringIO()):  # it also display()s the page
        fragment = viz.visualize_text(records).data
    title = html.escape(result["sentence"])
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Perturbation entropy: {title}</title></head><body>"
        f"<h1>How much of each word the layers keep</h1><p>{title}</p>"
        "<p>Noise on the output of <code>model.embeddings</code>; each row explains one "
        "encoder layer's full hidden state. Colour: nats kept per token, scaled to the "
        "row's maximum (Attribution Score: total nats).</p>"
        f"{fragment}</body></html>"
    )
    path.write_text(page, encoding="utf-8")


def write_png(result: dict[str, Any], path: Path) -> None:
    """Tokens × layers heatmap of nats kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(result["layers"])
    grid = torch.tensor([result["layers"][k]["nats_kept"] for k in layers])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * grid.shape[1], 1.2 + 0.5 * len(layers)))
    im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), result["tokens"], rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [f"layer {k}" for k in layers])
    fig.colorbar(im, ax=ax, label="nats kept")
    ax.set_title("Information of each token kept by each layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentence", default=TUTORIAL_SENTENCE)
    parser.add_argument(
        "--model", default=None, help="local path or hub id (default: packaged MiniLM)"
    )
    parser.add_argument(
        "--layers", default="3,last", help="comma-separated 1-based layers; 'last' allowed"
    )
    parser.add_argument(
        "--corpus-size", type=int, default=100, help="SST-2 dev sentences for σ_S (0: fallback)"
    )
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs"))
    args = parser.parse_args(argv)

    model, tokenizer = load_encoder(args.model)
    n_layers = len(model.encoder.layer)
    layers = [n_layers if t == "last" else int(t) for t in args.layers.split(",")]
    corpus = None
    if args.corpus_size > 0:
        try:
            corpus = [s for s, _ in sst2_dev(args.corpus_size)]
        except FileNotFoundError as err:
            print(f"note: {err}; using the reference fallback normaliser", file=sys.stderr)
    result = explain_layers(model, tokenizer, args.sentence, layers, corpus, args.rate, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explanation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_html(result, args.out / "explanation.html")
    write_png(result, args.out / "explanation.png")
    for k, layer in result["layers"].items():
        order = sorted(range(len(result["tokens"])), key=lambda i: layer["sigma"][i])
        top = ", ".join(result["tokens"][i] for i in order[:4])
        print(f"layer {k}: smallest σ (most kept): {top}  [{layer['seconds']:.2f} s]")
    print(f"wrote {args.out}/explanation.html, explanation.png, explanation.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
