"""SAE figures, each a function returning a matplotlib Figure (the caller saves and closes it).

User text (feature top texts) reaches matplotlib as plain text: ``$``, ``_`` and ``\\`` are shown
as typed, never parsed as mathtext.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# the movers figure is a snapshot figure: it lives in the figure registry (aquin_monitor.plots), re-exported here
from ..plots import feature_movers_figure

__all__ = ["feature_density_figure", "feature_movers_figure", "training_curves_figure"]


def _figure(*args: Any, **kwargs: Any):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from ..plots import PlainTextFigure

    return PlainTextFigure(*args, **kwargs)


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
    for i, (key, label) in enumerate(
        (("sae/fvu", "held-out FVU"), ("sae/l0", "L0"), ("sae/dead_fraction", "dead fraction"))
    ):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(label)
    fig.tight_layout()
    return fig
