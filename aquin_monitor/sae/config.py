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
        batch_size: samples per (global) step.
        max_epochs: upper bound on epochs.
        patience: epochs without held-out improvement before stopping.
        val_fraction: share of the samples held out (at least one sample; at most max_val_rows in all).
        auxk_coefficient: weight of the AuxK loss.
        dead_after: samples without firing after which a latent counts as dead (default: one epoch,
            at most 1,000,000 samples: on a 10M-row corpus a one-epoch window would let a latent
            idle for 10M samples before AuxK revives it).
        seed: initialisation, split and shuffling seed.
        device: torch device, or ``"auto"`` (CUDA when present, else CPU; default ``"cpu"``).
        block_rows: rows per block, the unit of the held-out split and of the shuffle.
        buffer_blocks: blocks shuffled together (memory: buffer_blocks × block_rows rows).
        max_val_rows: bound on the held-out rows (kept in memory for the per-epoch evaluation).
        checkpoint: file of the resumable training state (sae train: OUT/training_state.pt).
        checkpoint_every: steps between checkpoints (one is also written after every epoch).
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
    block_rows: int = 131_072
    buffer_blocks: int = 2
    max_val_rows: int = 65_536
    checkpoint: str | None = None
    checkpoint_every: int = 500
