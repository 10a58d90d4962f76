"""The SAE training settings: a plain dataclass, importable without torch (``sae train``'s flags are its fields)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SaeTrainConfig"]


@dataclass
class SaeTrainConfig:
    """Training settings; ``None`` means "chosen from the data" (see :func:`~aquin_monitor.sae.train.choose_sizes`).

    Args:
        num_latents: dictionary size (default 4·d, 8·d from 100k texts).
        k: active features per input (default 32; 16 under 20k texts, 8 under 5k).
        lr: Adam learning rate (default ``2e-4 / sqrt(num_latents / 2**14)``).
        batch_size: samples per step.
        max_epochs: upper bound on epochs.
        patience: epochs without held-out improvement before stopping.
        val_fraction: share of the samples held out (at least one sample).
        auxk_coefficient: weight of the AuxK loss.
        dead_after: samples without firing after which a latent counts as dead (default: one epoch).
        seed: initialisation, split and shuffling seed.
        device: torch device (default ``"cpu"``).
    """

    num_latents: int | None = None
    k: int | None = None
    lr: float | None = None
    batch_size: int = 1024
    max_epochs: int = 30
    patience: int = 3
    val_fraction: float = 0.05
    auxk_coefficient: float = 1 / 32
    dead_after: int | None = None
    seed: int = 0
    device: str | None = None
