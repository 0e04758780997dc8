"""The result of :func:`~captum_perturb.explain`: words, their nats and error bars."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captum_perturb.hf.html import ERROR_BAR_CSS, error_bars, text_record, text_table


@dataclass
class Explanation:
    r"""What a model's prediction, answer or hidden state keeps of each word of each text.

    A word's ``score`` is the information (nats) the explained output keeps about it —
    for the Captum classes the channel score summed over the word's embedding dimensions
    (``docs/method.rst``): 0 for a word the output ignores, large for a word it cannot
    do without. ``std_error`` is its Monte-Carlo standard error. For a classifier,
    ``direction`` is the signed reading: +1 where drowning the word in noise lowers the
    target logit (the word is evidence *for* the class), −1 where it raises it (evidence
    *against*), 0 where the two are not told apart at two standard errors.

    In a notebook the object shows as the words coloured by score with error bars;
    :meth:`to_html`, :meth:`plot` and :meth:`to_pandas` give the same as a page, a
    figure and a table.

    Attributes:
        kind: ``"classifier"``, ``"causal_lm"``, ``"encoder"`` or ``"layers"``.
        texts: the texts explained.
        words: per text, its words (special tokens are not words).
        scores: per text, ``(W,)`` nats per word (``(L, W)`` for ``"layers"``).
        std_errors: the same shape, standard errors of ``scores`` (for ``"layers"``, where
            a word's score is the sum of its tokens' nats, their standard errors combined
            in quadrature: approximate, as the tokens' estimates share draws).
        targets: per text, what was explained (a label, an answer, a hidden state).
        converged: per text, whether every estimate met the stopping rule.
        saturated: per text, like ``scores``, True where the word's σ sits at the bound
            σ_max (the noise barely moves the output: its score ranks it by the pressure
            at the bound, or is 0 in the paper's score).
        direction: per text, ``(W,)`` +1 / −1 / 0 (classifiers only), else None.
        probabilities: per text, the target's probability (classifiers and answers).
        layers: the layers of ``"layers"``' rows (0 = embedding output), else None.
        normaliser: how the state's scale σ_S was set (``"corpus"``, ``"packaged
            state_std"`` or ``"mean square fallback"``).
        results: the underlying results (Captum class, LLM class or LayerInformation).
    """

    kind: str
    texts: list[str]
    words: list[list[str]]
    scores: list[Tensor]
    std_errors: list[Tensor]
    targets: list[str]
    converged: list[bool]
    saturated: list[Tensor] = field(default_factory=list)
    direction: list[Tensor] | None = None
    probabilities: list[float | None] = field(default_factory=list)
    layers: list[int] | None = None
    normaliser: str = ""
    results: list[Any] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        n = len(self.texts)
        unconverged = self.converged.count(False)
        return (
            f"Explanation({self.kind}, {n} text{'s' * (n != 1)}, normaliser="
            f"{self.normaliser!r}, unconverged={unconverged})"
        )

    def to_pandas(self) -> Any:
        """One row per word of each text: ``example`` (the text's index), ``word``,
        ``word_index``, ``score`` (nats), ``std_error``, ``saturated``, ``target``,
        ``converged``; plus
        ``layer`` (layers), ``direction`` and ``signed_score`` (classifiers).

        Raises:
            ImportError: pandas is not installed (``pip install pandas``).
        """
        try:
            import pandas as pd  # type: ignore[import-untyped]
        except ImportError as err:
            raise ImportError("to_pandas needs pandas: pip install pandas") from err
        return pd.DataFrame(self._rows())

    def _rows(self) -> list[dict[str, Any]]:
        rows = []
        for i, words in enumerate(self.words):
            score, se = self.scores[i], self.std_errors[i]
            bound = self.saturated[i] if self.saturated else torch.zeros_like(score).bool()
            per_layer = self.layers if self.layers is not None else [None]
            for k, layer in enumerate(per_layer):
                s = score[k] if layer is not None else score
                e = se[k] if layer is not None else se
                b = bound[k] if layer is not None else bound
                for j, word in enumerate(words):
                    row: dict[str, Any] = {"example": i, "word": word, "word_index": j}
                    if layer is not None:
                        row["layer"] = layer
                    row.update(score=float(s[j]), std_error=float(e[j]), saturated=bool(b[j]))
                    if self.direction is not None:
                        d = int(self.direction[i][j])
                        row.update(direction=d, signed_score=d * float(s[j]))
                    row.update(target=self.targets[i], converged=self.converged[i])
                    rows.append(row)
        return rows

    def _fragment(self) -> str:
        parts = [f"<style>{ERROR_BAR_CSS}</style>"]
        for i, words in enumerate(self.words):
            title = f"Text {i}: explaining {self.targets[i]}"
            parts.append(f"<h3>{html.escape(title)}</h3>")
            score, se = self.scores[i], self.std_errors[i]
            sign = self.direction[i] if self.direction is not None else None
            prob = self.probabilities[i] if i < len(self.probabilities) else None
            rows: list[tuple[int | None, Tensor, Tensor]] = [(None, score, se)]
            if self.layers is not None:
                rows = list(zip(self.layers, score, se, strict=True))
            records, bars = [], []
            for layer, s_row, e_row in rows:
                shown = s_row * sign if sign is not None else s_row
                name = "score" if layer is None else f"layer {layer}"
                records.append(
                    text_record(shown.numpy(), words, name, pred=self.targets[i], prob=prob)
                )
                caption = "" if layer is None else f"<div>layer {layer}</div>"
                bars.append(caption + error_bars(words, s_row.numpy(), e_row.numpy(), sign))
            parts.append(text_table(records, legend=i == 0))
            parts.extend(bars)
            if not self.converged[i]:
                parts.append(
                    "<p><b>Not converged:</b> some estimates did not meet the stopping "
                    "rule; read the error bars.</p>"
                )
        note = f"σ_S: {self.normaliser}. Bars: nats kept per word, ± one standard error."
        parts.append(f"<p>{html.escape(note)}</p>")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        return self._fragment()

    def to_html(self, path: str | Path | None = None) -> str:
        """A standalone page (no network needed); written to ``path`` if given."""
        page = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            "<title>captum-perturb explanation</title></head><body>\n"
            + self._fragment()
            + "\n</body></html>\n"
        )
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def plot(self, example: int = 0, ax: Any = None) -> Any:
        """Bars of one text's words with error bars (a heat map of layers × words for
        ``"layers"``); returns the matplotlib Figure."""
        import matplotlib.pyplot as plt

        words = self.words[example]
        score, se = self.scores[example], self.std_errors[example]
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(words) + 1.5), 3.2))
        if self.layers is not None:
            image = ax.imshow(score.numpy(), aspect="auto", cmap="Blues")
            ax.set_yticks(range(len(self.layers)), [str(k) for k in self.layers])
            ax.set_ylabel("layer")
            ax.figure.colorbar(image, ax=ax, label="nats kept")
        else:
            colours: str | list[str] = "#4f6fa8"
            if self.direction is not None:
                colours = [
                    {1: "#3a923a", -1: "#c0392b"}.get(int(d), "#999999")
                    for d in self.direction[example]
                ]
            ax.bar(range(len(words)), score.numpy(), yerr=se.numpy(), color=colours, capsize=3)
            ax.set_ylabel("nats kept")
        ax.set_xticks(range(len(words)), words, rotation=45, ha="right")
        ax.set_title(f"explaining {self.targets[example]}")
        ax.figure.tight_layout()
        return ax.figure
