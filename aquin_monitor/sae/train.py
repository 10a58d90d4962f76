"""Train a TopK SAE on embeddings (Gao et al. 2024; EleutherAI sparsify's recipe, in plain torch).

- Initialisation: random unit decoder rows, encoder = decoder transpose, ``b_dec`` = data mean.
- Loss: FVU of the batch + (1/32) · AuxK, where AuxK lets the ``d_in // 2`` most active *dead*
  latents reconstruct the residual (scaled by the dead share); a latent is dead when it has not
  fired over the last ``dead_after`` training samples (default: one epoch).
- Adam, ``lr = 2e-4 / sqrt(num_latents / 2**14)`` unless given; after each ``backward`` the
  decoder gradient's component parallel to each row is removed, after each step the rows are
  renormalised to unit norm.
- A held-out split (``val_fraction``) is evaluated every epoch; training stops when its FVU has
  not improved for ``patience`` epochs and the best epoch's weights are kept.
- Seeded and deterministic on the CPU (same seed, same data: bit-identical weights).

Every epoch streams ``sae/fvu`` (held-out), ``sae/train_fvu``, ``sae/l0``, ``sae/dead_fraction``
and ``sae/auxk_loss`` through the given sinks (:mod:`aquin_monitor.sinks`), step = epoch.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .config import SaeTrainConfig
from .evaluate import feature_statistics
from .model import SparseAutoencoder

__all__ = ["SaeTrainConfig", "TrainResult", "TrainingLoop", "choose_sizes", "train_sae"]


@dataclass
class TrainResult:
    """What :func:`train_sae` returns: the SAE (best epoch), the per-epoch history and the split."""

    sae: SparseAutoencoder
    history: list[dict[str, float]]
    train_indices: np.ndarray
    val_indices: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)
    rule: str = ""


def choose_sizes(n_texts: int, d_in: int) -> tuple[int, int, str]:
    """Default ``(num_latents, k)`` for a corpus of ``n_texts`` embeddings of dimension ``d_in``.

    Returns:
        ``(num_latents, k, rule)`` where ``rule`` says in words which rule chose them.

    >>> choose_sizes(60_000, 384)[:2]
    (1536, 32)
    >>> choose_sizes(3_000, 384)[:2]
    (1536, 8)
    """
    expansion = 8 if n_texts >= 100_000 else 4
    k = 8 if n_texts < 5_000 else 16 if n_texts < 20_000 else 32
    rule = (
        f"{n_texts} texts: num_latents = {expansion}·d = {expansion * d_in} (8·d from 100k texts, else 4·d); "
        f"k = {k} (8 under 5k texts, 16 under 20k, else 32)"
    )
    return expansion * d_in, k, rule


def train_sae(
    embeddings: np.ndarray | torch.Tensor,
    config: SaeTrainConfig | None = None,
    *,
    sinks: Sequence[Any] = (),
    show_progress: bool = True,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a TopK SAE on ``embeddings`` [n, d].

    Args:
        embeddings: float array of embeddings, one row per text, used as given (not normalised).
        config: :class:`SaeTrainConfig` (defaults chosen from the data where ``None``).
        sinks: :mod:`aquin_monitor.sinks` sinks that receive the per-epoch ``sae/*`` scalars.
        show_progress: tqdm bar over epochs on stderr.
        metadata: extra ``cfg.json`` entries stored in the SAE (e.g. ``{"model": "default"}``).

    Returns:
        :class:`TrainResult`.

    Example:

        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(600, 16)).astype("float32")
        >>> result = train_sae(x, SaeTrainConfig(num_latents=32, k=4, max_epochs=2, batch_size=128),
        ...                    show_progress=False)
        >>> len(result.history), result.sae.num_latents
        (2, 32)
    """
    from ..sinks import MultiSink

    config = copy.copy(config or SaeTrainConfig())
    config.device = config.device or "cpu"
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32) if not torch.is_tensor(embeddings) else embeddings)
    x = x.to(device=config.device, dtype=torch.float32)
    if x.ndim != 2 or x.shape[0] < 2 or not torch.isfinite(x).all():
        raise ValueError(f"embeddings must be a finite [n >= 2, d] array, got shape {tuple(x.shape)}")
    n, d = x.shape
    latents, k, rule = choose_sizes(n, d)
    config.num_latents = config.num_latents or latents
    config.k = config.k or k
    config.lr = config.lr or 2e-4 / math.sqrt(config.num_latents / 2**14)
    train_idx, val_idx = _split(n, config.val_fraction, config.seed)
    config.dead_after = config.dead_after or len(train_idx)

    sae = SparseAutoencoder(d, config.num_latents, config.k, seed=config.seed, metadata=metadata).to(config.device)
    with torch.no_grad():
        sae.b_dec.copy_(x[train_idx].mean(0))
    loop = TrainingLoop(sae, x[train_idx], x[val_idx], config)
    sink = MultiSink(sinks)
    history: list[dict[str, float]] = []
    best = (math.inf, copy.deepcopy(sae.state_dict()), 0)
    from tqdm.auto import tqdm

    bar = tqdm(range(config.max_epochs), desc="sae", unit="epoch", disable=not show_progress, file=sys.stderr)
    for epoch in bar:
        metrics = loop.epoch(epoch)
        history.append({"epoch": epoch + 1, **metrics})
        sink.log_scalars(metrics, step=epoch + 1)
        bar.set_postfix(fvu=f"{metrics['sae/fvu']:.4f}", dead=f"{metrics['sae/dead_fraction']:.3f}")
        if metrics["sae/fvu"] < best[0] - 1e-6:
            best = (metrics["sae/fvu"], copy.deepcopy(sae.state_dict()), epoch + 1)
        elif epoch + 1 - best[2] >= config.patience:
            break
    bar.close()
    sink.flush()
    sae.load_state_dict(best[1])
    sae.metadata.update({"best_epoch": best[2], "n_train_texts": len(train_idx), "n_val_texts": len(val_idx)})
    return TrainResult(sae.eval(), history, train_idx.cpu().numpy(), val_idx.cpu().numpy(), asdict(config), rule)


def _split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return order[n_val:].sort().values, order[:n_val].sort().values


class TrainingLoop:
    """The training loop of :func:`train_sae`, one epoch per :meth:`epoch` call (public for benchmarks).

    Args:
        sae: the model (trained in place).
        train: training inputs [n, d] on the SAE's device.
        val: held-out inputs, evaluated after each epoch.
        config: settings; ``lr`` and ``dead_after`` must be set.

    State: the Adam optimizer, the shuffling generator and, per latent, the sample count at which
    it last fired (for the dead mask).
    """

    def __init__(self, sae: SparseAutoencoder, train: torch.Tensor, val: torch.Tensor, config: SaeTrainConfig) -> None:
        self.sae, self.train, self.val, self.config = sae, train, val, config
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.seen = 0
        self.last_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=train.device)

    def epoch(self, epoch: int) -> dict[str, float]:
        sae, config = self.sae, self.config
        sae.train()
        order = torch.randperm(len(self.train), generator=self.generator).to(self.train.device)
        fvu_sum = torch.zeros((), device=self.train.device)
        auxk_sum = torch.zeros((), device=self.train.device)
        steps = 0
        for start in range(0, len(order), config.batch_size):
            batch = self.train[order[start : start + config.batch_size]]
            if len(batch) < 2:
                continue
            dead = (self.seen - self.last_fired) >= config.dead_after
            out = sae(batch, dead_mask=dead, auxk_coefficient=config.auxk_coefficient)
            self.optimizer.zero_grad(set_to_none=True)
            (out.fvu + out.auxk_loss).backward()
            sae.remove_parallel_gradient()
            self.optimizer.step()
            sae.normalize_decoder()
            self.seen += len(batch)
            self.last_fired[out.indices[out.acts > 0]] = self.seen
            fvu_sum += out.fvu.detach()
            auxk_sum += out.auxk_loss.detach()
            steps += 1
        dead = (self.seen - self.last_fired) >= config.dead_after
        stats = feature_statistics(sae, self.val)
        return {
            "sae/fvu": stats.fvu,
            "sae/train_fvu": float(fvu_sum) / max(steps, 1),
            "sae/l0": stats.l0,
            "sae/dead_fraction": float(dead.float().mean()),
            "sae/auxk_loss": float(auxk_sum) / max(steps, 1),
        }
