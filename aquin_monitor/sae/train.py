"""Train a TopK SAE on embeddings (Gao et al. 2024; EleutherAI sparsify's recipe, in plain torch), streamed.

- Initialisation: random unit decoder rows, encoder = decoder transpose, ``b_dec`` = mean of the
  training rows (one streamed pass).
- Loss: FVU of the batch + (1/32) · AuxK, where AuxK lets the ``d_in // 2`` most active *dead*
  latents reconstruct the residual (scaled by the dead share); a latent is dead when it has not
  fired over the last ``dead_after`` training samples (default: one epoch, at most
  :data:`DEAD_AFTER_CAP` samples).
- Adam, ``lr = 2e-4 / sqrt(num_latents / 2**14)`` unless given; after each ``backward`` the
  decoder gradient's component parallel to each row is removed, after each step the rows are
  renormalised to unit norm.
- The rows are read from a :class:`~aquin_monitor.rows.RowSource` in shuffled buffers of
  ``buffer_blocks × block_rows`` rows (:mod:`.stream`): memory is bounded by a buffer and the
  held-out set (at most ``max_val_rows`` rows), whatever the corpus size. A corpus of one block
  (``n ≤ block_rows``) is trained exactly as an array in memory: one ``randperm`` per epoch.
- A held-out split is evaluated every epoch; training stops when its FVU has not improved for
  ``patience`` epochs and the best epoch's weights are kept.
- Data-parallel under ``torchrun`` when a process group is initialised (:mod:`.train_dist`):
  ``DistributedDataParallel`` averages the gradients; each rank reads its share of every global
  batch and divides by the global batch's variance, and the firing flags are summed over ranks,
  so every rank holds the same SAE, optimizer and dead counters as one process on the same batches.
- Resumable: with ``checkpoint`` set, the whole training state (weights, Adam, shuffle position,
  dead counters, history) is written atomically every ``checkpoint_every`` steps and each epoch;
  a run started again with the same settings continues from it and ends with the same SAE.
- Seeded and deterministic on the CPU (same seed, same data: bit-identical weights).

Every epoch streams ``sae/fvu`` (held-out), ``sae/train_fvu``, ``sae/l0``, ``sae/dead_fraction``
and ``sae/auxk_loss`` through the given sinks (:mod:`aquin_monitor.sinks`), step = epoch.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..rows import ArrayRows, RowSource
from .config import SaeTrainConfig
from .evaluate import feature_statistics
from .model import SparseAutoencoder
from .stream import RowPlan, buffer_batches, scan_source

__all__ = [
    "DEAD_AFTER_CAP",
    "SaeCheckpointError",
    "SaeTrainConfig",
    "SaeTrainingError",
    "StreamingTrainer",
    "TrainResult",
    "choose_sizes",
    "resolve_device",
    "train_rows",
    "train_sae",
]

DEAD_AFTER_CAP = 1_000_000
"""Default ``dead_after`` is one epoch, but never more samples than this (see ``SaeTrainConfig.dead_after``)."""

CHECKPOINT_FORMAT = "aquin-monitor sae training state 1"
# settings that shape the trajectory: a checkpoint only resumes a run that agrees on all of them
_TRAJECTORY_FIELDS = (
    "num_latents",
    "k",
    "lr",
    "batch_size",
    "val_fraction",
    "auxk_coefficient",
    "dead_after",
    "seed",
    "block_rows",
    "buffer_blocks",
    "max_val_rows",
)


class SaeTrainingError(RuntimeError):
    """Training stopped for a reason outside this process (a lost rank): one line."""


class SaeCheckpointError(SaeTrainingError, ValueError):
    """The checkpoint file cannot resume this run (other settings or rows, a cut or foreign file): one line."""


@dataclass
class TrainResult:
    """What :func:`train_sae` returns: the SAE (best epoch), the per-epoch history and the split."""

    sae: SparseAutoencoder
    history: list[dict[str, float]]
    plan: RowPlan
    config: dict[str, Any] = field(default_factory=dict)
    rule: str = ""
    held_out: np.ndarray | None = None
    """The held-out rows [n_val, d] (at most about ``max_val_rows``), as evaluated each epoch."""

    @property
    def val_indices(self) -> np.ndarray:
        """Sorted row numbers of the held-out rows."""
        return np.concatenate(
            [self.plan.split(b)[1].numpy() + self.plan.block_range(b)[0] for b in range(self.plan.n_blocks)]
        )

    @property
    def train_indices(self) -> np.ndarray:
        """Sorted row numbers of the training rows (n of them: for small corpora and tests)."""
        return np.concatenate(
            [self.plan.split(b)[0].numpy() + self.plan.block_range(b)[0] for b in range(self.plan.n_blocks)]
        )


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


def resolve_device(device: str | None) -> str:
    """``None`` → ``"cpu"``; ``"auto"`` → ``"cuda"`` when CUDA is present, else ``"cpu"``; under ``torchrun`` on
    CUDA, this rank's GPU."""
    device = device or "cpu"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def train_sae(
    embeddings: np.ndarray | torch.Tensor,
    config: SaeTrainConfig | None = None,
    *,
    sinks: Sequence[Any] = (),
    show_progress: bool = True,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a TopK SAE on ``embeddings`` [n, d] in memory (:func:`train_rows` over
    :class:`~aquin_monitor.rows.ArrayRows`).

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
    x = (
        embeddings.detach().cpu().float().numpy()
        if torch.is_tensor(embeddings)
        else np.asarray(embeddings, dtype=np.float32)
    )
    if x.ndim != 2 or x.shape[0] < 2 or not np.isfinite(x).all():
        raise ValueError(f"embeddings must be a finite [n >= 2, d] array, got shape {tuple(x.shape)}")
    return train_rows(ArrayRows(x), config, sinks=sinks, show_progress=show_progress, metadata=metadata)


def train_rows(
    source: RowSource,
    config: SaeTrainConfig | None = None,
    *,
    sinks: Sequence[Any] = (),
    show_progress: bool = True,
    metadata: dict[str, Any] | None = None,
    on_step: Callable[[StreamingTrainer], None] | None = None,
) -> TrainResult:
    """Train a TopK SAE on the rows of ``source``, streamed (see the module docstring).

    Under an initialised ``torch.distributed`` process group every rank calls this with the same
    source and config; only rank zero writes sinks and checkpoints, every rank returns the same SAE.

    Args:
        source: the embeddings, e.g. an embedding store or :class:`~aquin_monitor.rows.ArrayRows`.
        config, sinks, show_progress, metadata: as for :func:`train_sae`.
        on_step: called with the trainer after every optimizer step (progress, tests).

    Raises:
        SaeTrainingError: another rank was lost, or ``config.checkpoint`` belongs to other settings.
    """
    from ..distributed import rank_and_world_size
    from ..sinks import MultiSink

    config = copy.copy(config or SaeTrainConfig())
    n, d = len(source), source.dimension
    if n < 2:
        raise ValueError(f"embeddings must hold at least 2 rows, got {n}")
    latents, k, rule = choose_sizes(n, d)
    config.num_latents = config.num_latents or latents
    config.k = config.k or k
    config.lr = config.lr or 2e-4 / math.sqrt(config.num_latents / 2**14)
    config.device = resolve_device(config.device)
    plan = RowPlan(n, config.block_rows, config.val_fraction, config.seed, config.max_val_rows)
    train_mean, held_out, n_train = scan_source(source, plan)
    config.dead_after = config.dead_after or min(n_train, DEAD_AFTER_CAP)

    sae = SparseAutoencoder(d, config.num_latents, config.k, seed=config.seed, metadata=metadata).to(config.device)
    with torch.no_grad():
        sae.b_dec.copy_(train_mean)
    rank, world_size = rank_and_world_size()
    trainer = StreamingTrainer(
        sae, source, plan, held_out.to(config.device), config, rank=rank, world_size=world_size, on_step=on_step
    )
    if config.checkpoint and Path(config.checkpoint).exists():
        trainer.load_checkpoint(config.checkpoint)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.max_epochs,
        initial=len(trainer.history),
        desc="sae",
        unit="epoch",
        disable=not show_progress or rank != 0,
        file=sys.stderr,
    )
    sink = MultiSink(sinks if rank == 0 else ())
    try:
        trainer.fit(sink, bar)
    finally:
        bar.close()
        sink.flush()
    sae.load_state_dict(trainer.best_state)
    sae.metadata.update({"best_epoch": trainer.best_epoch, "n_train_texts": n_train, "n_val_texts": len(held_out)})
    return TrainResult(sae.eval(), trainer.history, plan, asdict(config), rule, held_out.numpy())


class StreamingTrainer:
    """The training loop of :func:`train_rows`: epochs of shuffled buffers, checkpoints, early stopping.

    Args:
        sae: the model (trained in place), on ``config.device``.
        source: the rows; ``plan`` says which are held out and how blocks are laid out.
        held_out: the held-out rows [n_val, d] on the SAE's device, evaluated after each epoch.
        config: settings; ``lr`` and ``dead_after`` must be set.
        rank, world_size: this process's place in the process group (``0, 1`` alone).
        on_step: called with the trainer after every step.

    State (all in :meth:`state_dict`): Adam, the two shuffling generators as they were at the
    start of the current epoch, the position ``(epoch, buffer, batch)`` of the next step, the
    samples seen and per latent the sample count at which it last fired, the epoch's running
    sums, the history and the best epoch's weights. Identical on every rank.
    """

    def __init__(
        self,
        sae: SparseAutoencoder,
        source: RowSource,
        plan: RowPlan,
        held_out: torch.Tensor,
        config: SaeTrainConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        on_step: Callable[[StreamingTrainer], None] | None = None,
    ) -> None:
        self.sae, self.source, self.plan, self.held_out, self.config = sae, source, plan, held_out, config
        self.rank, self.world_size, self.on_step = rank, world_size, on_step
        self.device = held_out.device
        if config.lr is None or config.dead_after is None:
            raise ValueError("config.lr and config.dead_after must be set")
        self.lr, self.dead_after = float(config.lr), int(config.dead_after)
        self.model: torch.nn.Module = sae
        if world_size > 1:
            with self._collective("wrapping the SAE in DistributedDataParallel"):
                self.model = torch.nn.parallel.DistributedDataParallel(sae)
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=self.lr)
        self.order_generator = torch.Generator().manual_seed(config.seed + 2)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 1)
        self.epoch_start_states = (self.order_generator.get_state(), self.shuffle_generator.get_state())
        self.position = (0, 0, 0)
        self.seen = self.step = 0
        self.last_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=self.device)
        self.sums = torch.zeros(3, device=self.device)  # fvu, auxk loss, steps of the current epoch
        self.history: list[dict[str, float]] = []
        self.best_fvu, self.best_epoch, self.finished = math.inf, 0, False
        self.best_state = copy.deepcopy(sae.state_dict())
        self.checkpoint_step = -1

    # ---------------------------------------------------------------- epochs

    def fit(self, sink: Any, bar: Any = None) -> None:
        """Run epochs from the current position until ``max_epochs`` or early stopping."""
        while not self.finished and self.position[0] < self.config.max_epochs:
            epoch = self.position[0]
            metrics = self.run_epoch()
            self.history.append({"epoch": epoch + 1, **metrics})
            sink.log_scalars(metrics, step=epoch + 1)
            if metrics["sae/fvu"] < self.best_fvu - 1e-6:
                self.best_fvu, self.best_epoch = metrics["sae/fvu"], epoch + 1
                self.best_state = copy.deepcopy(self.sae.state_dict())
            elif epoch + 1 - self.best_epoch >= self.config.patience:
                self.finished = True
            self.position = (epoch + 1, 0, 0)
            self.sums.zero_()
            self.save_checkpoint()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(fvu=f"{metrics['sae/fvu']:.4f}", dead=f"{metrics['sae/dead_fraction']:.3f}")
        self.finished = True

    def run_epoch(self) -> dict[str, float]:
        """Train from the current position to the end of its epoch; the held-out metrics after it."""
        epoch, first_buffer, first_batch = self.position
        self.order_generator.set_state(self.epoch_start_states[0])
        self.shuffle_generator.set_state(self.epoch_start_states[1])
        self.sae.train()
        order = torch.randperm(self.plan.n_blocks, generator=self.order_generator).tolist()
        buffers = [order[i : i + self.config.buffer_blocks] for i in range(0, len(order), self.config.buffer_blocks)]
        for index, blocks in enumerate(buffers):
            n_rows = sum(len(self.plan.split(block)[0]) for block in blocks)
            permutation = torch.randperm(n_rows, generator=self.shuffle_generator)
            if index < first_buffer:
                continue  # resuming: this buffer was trained before the checkpoint
            data = buffer_batches(
                self.source,
                self.plan,
                blocks,
                permutation,
                self.config.batch_size,
                rank=self.rank,
                world_size=self.world_size,
            )
            rows = data.rows.pin_memory() if self.device.type == "cuda" else data.rows
            data.rows = rows.to(self.device, non_blocking=True)
            for batch, local, global_size in data.batches(first_batch if index == first_buffer else 0):
                self.train_step(local, global_size)
                last = batch + 1 == len(data.global_sizes)
                self.position = (epoch, index + 1, 0) if last else (epoch, index, batch + 1)
                if self.config.checkpoint and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.on_step is not None:
                    self.on_step(self)
        self.epoch_start_states = (self.order_generator.get_state(), self.shuffle_generator.get_state())
        return self.evaluate()

    def train_step(self, rows: torch.Tensor, global_size: int) -> None:
        """One optimizer step on this rank's ``rows`` of a global batch of ``global_size`` rows."""
        sae, config = self.sae, self.config
        dead = (self.seen - self.last_fired) >= self.dead_after
        variance = self.global_variance(rows, global_size) if self.world_size > 1 else None
        out = self.model(rows, dead_mask=dead, auxk_coefficient=config.auxk_coefficient, total_variance=variance)
        self.optimizer.zero_grad(set_to_none=True)
        with self._collective("the gradient all-reduce"):
            # DDP averages the ranks' gradients; the global loss is their sum, hence the factor
            ((out.fvu + out.auxk_loss) * self.world_size).backward()
        sae.remove_parallel_gradient()
        self.optimizer.step()
        sae.normalize_decoder()
        self.seen += global_size
        if self.world_size == 1:
            self.last_fired[out.indices[out.acts > 0]] = self.seen
            fvu, auxk = out.fvu.detach(), out.auxk_loss.detach()
        else:
            flags = torch.zeros(sae.num_latents + 2, device=self.device)
            flags[out.indices[out.acts > 0]] = 1.0
            flags[-2:] = torch.stack([out.fvu.detach(), out.auxk_loss.detach()])
            self.all_reduce(flags, "the firing counts")
            self.last_fired[flags[:-2] > 0] = self.seen
            fvu, auxk = flags[-2], flags[-1]
        self.sums[0] += fvu
        self.sums[1] += auxk
        self.sums[2] += 1
        self.step += 1

    def global_variance(self, rows: torch.Tensor, global_size: int) -> torch.Tensor:
        """``Σ‖x − x̄‖²`` over the global batch (two all-reduces: the sum, then the squared deviations)."""
        total = rows.sum(0)
        self.all_reduce(total, "the batch mean")
        deviation = (rows - total / global_size).pow(2).sum()
        self.all_reduce(deviation, "the batch variance")
        return deviation

    def evaluate(self) -> dict[str, float]:
        """The epoch's metrics: held-out FVU and L0, running train FVU and AuxK loss, dead fraction."""
        dead = (self.seen - self.last_fired) >= self.dead_after
        stats = feature_statistics(self.sae, self.held_out)
        steps = max(float(self.sums[2]), 1.0)
        return {
            "sae/fvu": stats.fvu,
            "sae/train_fvu": float(self.sums[0]) / steps,
            "sae/l0": stats.l0,
            "sae/dead_fraction": float(dead.float().mean()),
            "sae/auxk_loss": float(self.sums[1]) / steps,
        }

    # ---------------------------------------------------------------- collectives

    def all_reduce(self, tensor: torch.Tensor, what: str) -> None:
        """Sum ``tensor`` over the ranks in place; a lost rank becomes one :class:`SaeTrainingError` line."""
        with self._collective(what):
            torch.distributed.all_reduce(tensor)

    def _collective(self, what: str) -> Any:
        import contextlib

        @contextlib.contextmanager
        def guard() -> Any:
            if self.world_size == 1:
                yield
                return
            try:
                yield
            except (RuntimeError, torch.distributed.DistError) as exc:
                where = (
                    (
                        f"the last checkpoint, {self.config.checkpoint} (step {self.checkpoint_step}), is intact: "
                        "start the job again to resume from it"
                    )
                    if self.checkpoint_step >= 0
                    else "no checkpoint was written"
                )
                reason = " ".join(str(exc).split())[:200]
                raise SaeTrainingError(
                    f"rank {self.rank} of {self.world_size}: another rank stopped answering during "
                    f"{what} at step {self.step + 1} ({reason}); {where}"
                ) from exc

        return guard()

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this trainer is (CPU tensors)."""
        cpu = {name: tensor.detach().cpu().clone() for name, tensor in self.sae.state_dict().items()}
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": {name: getattr(self.config, name) for name in _TRAJECTORY_FIELDS},
            "rows": [self.plan.n_rows, self.source.dimension],
            "sae": cpu,
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "generators": list(self.epoch_start_states),
            "position": list(self.position),
            "seen": self.seen,
            "step": self.step,
            "last_fired": self.last_fired.cpu(),
            "sums": self.sums.cpu(),
            "history": self.history,
            "best": {"fvu": self.best_fvu, "epoch": self.best_epoch, "state": _to_cpu(self.best_state)},
            "finished": self.finished,
        }

    def save_checkpoint(self) -> None:
        """Write :meth:`state_dict` to ``config.checkpoint`` by an atomic rename (rank zero; no-op without a path)."""
        if not self.config.checkpoint:
            return
        if self.rank == 0:
            from ..atomic import atomic_path

            target = Path(self.config.checkpoint)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                torch.save(self.state_dict(), tmp)
        self.checkpoint_step = self.step

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint` with the same settings and rows."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:  # a foreign or cut file
            raise SaeCheckpointError(
                f"{path}: not a readable training checkpoint ({' '.join(str(exc).split())[:160]}); "
                "remove it to start afresh"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise SaeCheckpointError(f"{path}: not an aquin-monitor SAE training checkpoint; remove it to start afresh")
        if list(state["rows"]) != [self.plan.n_rows, self.source.dimension]:
            raise SaeCheckpointError(
                f"{path}: rows: the checkpoint was trained on {state['rows'][0]} rows of dimension "
                f"{state['rows'][1]}, these are {self.plan.n_rows} of {self.source.dimension}"
            )
        now = {name: getattr(self.config, name) for name in _TRAJECTORY_FIELDS}
        for name, value in now.items():
            if state["settings"].get(name) != value:
                raise SaeCheckpointError(
                    f"{path}: {name}: {state['settings'].get(name)!r} in the checkpoint, {value!r} now; "
                    "resume with the same settings or remove the checkpoint"
                )
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch_start_states = tuple(state["generators"])
        self.position = tuple(state["position"])
        self.seen, self.step = int(state["seen"]), int(state["step"])
        self.last_fired = state["last_fired"].to(self.device)
        self.sums = state["sums"].to(self.device)
        self.history = list(state["history"])
        self.best_fvu, self.best_epoch = float(state["best"]["fvu"]), int(state["best"]["epoch"])
        self.best_state = {name: t.to(self.device) for name, t in state["best"]["state"].items()}
        self.finished = bool(state["finished"])
        self.checkpoint_step = self.step


def _to_cpu(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value
