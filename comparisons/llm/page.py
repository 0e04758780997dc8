"""The main job's language-model page: which prompt words the trained GPT-2's answer keeps.

On the SST-2 GPT-2 of :mod:`comparisons.models.language_model`, the prompt (default
:data:`PROMPT`) gets the model's own greedy answer, and
:class:`~captum_perturb.LLMPerturbationEntropyAttribution` says how many nats of each
prompt word the answer's next-token distributions keep — for the whole answer
(``seq_attr``) and per answer token (``token_attr``), with σ_S from the first halves of
500 SST-2 *train* sentences (:func:`comparisons.llm.study.corpus_prompts`, as the LLM
study) — then which words each layer keeps at the answer position (``explain_layers``,
σ_S of one position's state per layer from the same prompts). Writes into ``OUT/llm/``:

* ``index.html`` — the answer, Captum's ``plot_seq_attr`` and ``plot_token_attr``, and the
  layer-by-layer heatmap (template ``llm_page.html.j2`` of :mod:`comparisons.html`);
* ``layers.html`` — one Captum ``visualize_text`` row per layer;
* ``llm.json`` — tokens, nats, standard errors and convergence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from comparisons.html import figure_data_uri, render
from comparisons.layers.page import layers_html
from comparisons.layers.plots import heatmap

PROMPT = "the film is a"
"""The prompt of the issue's example (the README's LLM snippet uses it too)."""

MAX_NEW_TOKENS = 8


def explain_prompt(model: Any, tokenizer: Any, prompt: str, corpus: list[str], seed: int) -> Any:
    """``(result, layer information)`` for ``prompt`` and the model's greedy answer."""
    from captum.attr import TextTokenInput

    from captum_perturb import (
        LLMPerturbationEntropyAttribution,
        layer_state_std,
        next_token_state_std,
    )

    std = next_token_state_std(model, tokenizer, corpus)
    enc = tokenizer(corpus, return_tensors="pt", padding=True)
    layer_std = layer_state_std(model, enc, token_reduction="pool")  # one position's state
    llm_attr = LLMPerturbationEntropyAttribution(model, tokenizer, state_std=std)
    inp = TextTokenInput(prompt, tokenizer, skip_tokens=[tokenizer.bos_token_id])
    gen = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    res = llm_attr.attribute(inp, gen_args=gen, seed=seed)
    info = llm_attr.explain_layers(inp, state_std=layer_std, seed=seed)
    return res, info


def write_page(res: Any, info: Any, out_dir: Path, prompt: str, model_name: str) -> Path:
    """Write ``index.html``, ``layers.html`` and ``llm.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    answer = " ".join(res.output_tokens)  # Captum's readable tokens
    seq_fig, _ = res.plot_seq_attr(show=False)
    tok_fig, _ = res.plot_token_attr(show=False)
    layers_png = heatmap(info, 0, out_dir / "layers.png", title="nats kept at the answer position")
    layers_html(info, [0], out_dir / "layers.html", f"Layers at the answer position: {prompt}")
    record = {
        "model": model_name,
        "prompt": prompt,
        "input_tokens": res.input_tokens,
        "output_tokens": res.output_tokens,
        "seq_attr": res.seq_attr.tolist(),
        "seq_std_error": res.seq_std_error.tolist(),
        "token_attr": res.token_attr.tolist(),
        "converged": res.converged.tolist(),
        "normaliser": res.normaliser,
    }
    (out_dir / "llm.json").write_text(json.dumps(record, indent=1))
    page = out_dir / "index.html"
    html = render(
        "llm_page.html.j2",
        title="LLM",
        model=model_name,
        prompt=prompt,
        answer=answer,
        std_error=float(res.seq_std_error.max()),
        converged=res.diagnostics["converged"],
        seq_attr=figure_data_uri(seq_fig),
        token_attr=figure_data_uri(tok_fig),
        layers_png=layers_png.name,
    )
    page.write_text(html, encoding="utf-8")
    return page


def llm_page(out_dir: Path, recipe: str, prompt: str = PROMPT, seed: int = 0) -> Path | None:
    """The page on the SST-2 GPT-2 (trained on first use, then cached); None without
    SST-2 on disk (the model is trained on it), with a note."""
    from comparisons.llm.study import corpus_prompts
    from comparisons.models.language_model import load_language_model
    from comparisons.models.resources import data_dir, read_sentences

    train = data_dir() / "sst2" / "train.tsv"
    if not train.exists():
        print(f"note: {train} not found: the LLM page needs SST-2 to train its GPT-2; skipped")
        return None
    print(f"LLM page: the SST-2 GPT-2 ({recipe} recipe; the full one trains ~15 min once)")
    model, tokenizer, where = load_language_model(recipe)
    corpus = corpus_prompts([s for s, _ in read_sentences(train)])  # as the LLM study
    with torch.random.fork_rng(devices=[]):
        res, info = explain_prompt(model, tokenizer, prompt, corpus, seed)
    page = write_page(res, info, out_dir, prompt, f"GPT-2 on SST-2 ({where.name})")
    words = [t.replace("Ġ", "") for t in res.input_tokens]  # byte-level BPE's space mark
    top = sorted(zip(res.seq_attr.tolist(), words, strict=True), reverse=True)
    answer = " ".join(res.output_tokens)
    kept = ", ".join(f"{w} {n:.0f}" for n, w in top)
    print(f"{prompt!r} -> {answer!r}; nats the answer keeps: {kept}")
    return page
