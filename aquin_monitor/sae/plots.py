"""SAE figures, each a function returning a matplotlib Figure (the caller saves and closes it).

User text (feature top texts) reaches matplotlib as plain text: ``$``, ``_`` and ``\\`` are shown
as typed, never parsed as mathtext.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["feature_density_figure", "feature_movers_figure", "training_curves_figure"]


def _figure(*args: Any, **kwargs: Any):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from ..plots import PlainTextFigure

    return PlainTextFigure(*args, **kwargs)


def _plain(text: str, limit: int = 70) -> str:
    """One line, at most ``limit`` characters (the Text artist gets ``parse_math=False``)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def feature_density_figure(frequency: np.ndarray, *, title: str = "feature density"):
    """Histogram of log10(firing frequency) over features; dead features counted apart.

    Args:
        frequency: share of inputs on which each feature fires, [n_latents].

    >>> fig = feature_density_figure(np.array([0.0, 0.01, 0.1, 0.5]))
    >>> fig.axes[0].get_xlabel()
    'log10(firing frequency)'
    """
    frequency = np.asarray(frequency, dtype=float)
    alive = frequency[frequency > 0]
    fig = _figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    if alive.size:
        ax.hist(np.log10(alive), bins=40, color="#4c72b0")
    ax.set_xlabel("log10(firing frequency)")
    ax.set_ylabel("features")
    ax.set_title(f"{title} ({int((frequency == 0).sum())} dead of {frequency.size})", parse_math=False)
    fig.tight_layout()
    return fig


def training_curves_figure(history: Sequence[Mapping[str, float]]):
    """Held-out FVU, L0 and dead fraction over training epochs.

    >>> fig = training_curves_figure([{"epoch": 1, "sae/fvu": 0.5, "sae/l0": 32, "sae/dead_fraction": 0.1}])
    >>> len(fig.axes)
    3
    """
    epochs = [row["epoch"] for row in history]
    fig = _figure(figsize=(9, 3))
    for i, (key, label) in enumerate((("sae/fvu", "held-out FVU"), ("sae/l0", "L0"), ("sae/dead_fraction", "dead fraction"))):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(label)
    fig.tight_layout()
    return fig


def feature_movers_figure(movers: Mapping[str, Sequence[Mapping[str, Any]]], *, top: int = 8):
    """Features whose firing frequency rose (gained) or fell (lost) most, with their top text.

    Args:
        movers: :func:`aquin_monitor.sae.monitoring.feature_movers` output.
        top: bars per side.

    >>> m = {"gained": [{"feature": 3, "frequency_before": 0.0, "frequency_after": 0.2, "top_texts": ["$$ <script>"]}],
    ...      "lost": []}
    >>> fig = feature_movers_figure(m)
    >>> fig.canvas.draw()  # plain text: "$$" does not break rendering
    """
    fig = _figure(figsize=(10, 5))
    for i, side in enumerate(("gained", "lost")):
        ax = fig.add_subplot(1, 2, i + 1)
        rows = list(movers.get(side, []))[:top][::-1]
        deltas = [row["frequency_after"] - row["frequency_before"] for row in rows]
        positions = np.arange(len(rows))
        ax.barh(positions, deltas, color="#55a868" if side == "gained" else "#c44e52")
        ax.set_yticks([])
        # one Text artist per label with parse_math=False (tick labels may be rebuilt at draw time)
        for position, row in zip(positions, rows):
            label = f"#{row['feature']}: " + _plain((row.get("top_texts") or [""])[0], 45)
            ax.text(0.0, position + 0.42, label, fontsize=7, va="bottom", parse_math=False,
                    transform=ax.get_yaxis_transform())
        ax.set_ylim(-0.6, max(len(rows), 1) - 0.1 + 0.4)
        ax.set_xlabel("change in firing frequency")
        ax.set_title(f"features {side}", parse_math=False)
    fig.tight_layout()
    return fig
