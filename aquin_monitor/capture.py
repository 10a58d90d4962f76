"""Capture the similarity matrix a loss already computes, without changing the loss or its gradients.

Two ways in, both feeding a :class:`ContrastiveTap` that the training monitor drains once per
optimizer step:

- sentence-transformers losses: wrap once, ``loss = monitored(MultipleNegativesRankingLoss(model))``.
  The wrapper records the first ``query_to_doc`` score matrix (or the triplet distances) the loss
  computes, as a detached float32 copy, which the tap turns into device-side sums when the monitor
  drains it at the optimizer step (no host sync, no extra forward pass). The loss value and the
  gradients are bit-for-bit those of the unwrapped loss.
- your own loss (Lightning): call :func:`report_similarity` (or :func:`report_triplet`) with the
  score matrix you computed, or use the losses of :mod:`aquin_monitor.losses`, which do it for you.

Covered sentence-transformers losses: MultipleNegativesRankingLoss (pairs, hard-negative columns,
symmetric and other ``directions``), MultipleNegativesSymmetricRankingLoss,
CachedMultipleNegativesRankingLoss (and its symmetric variant), TripletLoss, MatryoshkaLoss /
Matryoshka2dLoss around any of these (statistics of the full dimension), and GISTEmbedLoss /
CachedGISTEmbedLoss (anchor × positive and anchor × hard-negative matrices, read before the guide's
false-negative masking; the anchor–anchor and positive–positive matrices they add are not read; see
:class:`_GuidedRecording`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from .distributed import rank_and_world_size
from .failsoft import report_failure
from .signals.contrastive import (
    ContrastiveSums,
    check_scores,
    check_triplet,
    similarity_samples,
    similarity_sums,
    triplet_similarities,
    triplet_sums,
)

logger = logging.getLogger(__name__)


@dataclass
class TapReading:
    """What the losses reported since the last drain (device tensors, not yet on the host)."""

    sums: ContrastiveSums | None
    loss_sum: torch.Tensor | None
    loss_count: int
    positive_samples: list[torch.Tensor] = field(default_factory=list)
    negative_samples: list[torch.Tensor] = field(default_factory=list)


class ContrastiveTap:
    """Accumulates contrastive sums and loss values over the micro-batches of one optimizer step.

    A report keeps a detached float32 copy of what the loss computed (one device copy; the loss may
    change its matrix in place afterwards, as GISTEmbed's false-negative masking does) and the tap
    reduces the copies to sums at :meth:`drain`, i.e. at the monitor's call after ``backward()``. On a
    GPU the thirty-odd small kernels of that reduction are then launched while the device works through
    the backward pass, not between the forward and the backward pass where the device may be waiting
    for the host. The copies are reduced early once they hold more than ``max_deferred_elements``
    values (CachedMultipleNegativesRankingLoss, large gradient accumulation), so they never take more
    than that much device memory.

    Reporting never raises into the training loop: a failure warns once and switches the tap off,
    unless ``strict`` is set (tests).
    """

    max_deferred_elements = 1 << 24  # 64 MiB of float32

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.enabled = True
        self.keep_samples = False  # set by the monitor on steps that log histograms
        self._lock = threading.Lock()
        self._armed: Callable[[], None] | None = (
            None  # called when the backward pass of the next reported tensor begins
        )
        self._reset()

    def _reset(self) -> None:
        self._sums: ContrastiveSums | None = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._pos: list[torch.Tensor] = []
        self._neg: list[torch.Tensor] = []
        self._deferred: list[tuple] = []
        self._deferred_elements = 0

    def add(
        self, sums: ContrastiveSums, positives: torch.Tensor | None = None, negatives: torch.Tensor | None = None
    ) -> None:
        """Add reduced statistics; histogram samples are kept when given (the reporter decides)."""
        with self._lock:
            self._sums = sums if self._sums is None else self._sums + sums
            if positives is not None:
                self._pos.append(positives)
                if negatives is not None:
                    self._neg.append(negatives)

    def defer(
        self, what: str, reduce: Callable[..., tuple], tensors: tuple[torch.Tensor, ...], *, copy: bool = True
    ) -> None:
        """Keep float32 copies of ``tensors``; :meth:`drain` adds ``reduce(*copies, keep_samples)``.

        ``reduce`` returns ``(sums, positive_samples, negative_samples)`` (samples None unless asked).
        ``copy=False``: the tensors already are float32 copies nothing else holds; they are kept as given.
        """
        copies = tuple(t.detach().to(torch.float32, copy=True) for t in tensors) if copy else tuple(tensors)
        with self._lock:
            self._deferred.append((what, reduce, copies, self.keep_samples))
            self._deferred_elements += sum(c.numel() for c in copies)
            full = self._deferred_elements > self.max_deferred_elements
        if full:
            self._reduce_deferred()

    def _reduce_deferred(self) -> None:
        with self._lock:
            pending, self._deferred, self._deferred_elements = self._deferred, [], 0
        for what, reduce, copies, keep in pending:
            self.guarded(what, self._add_reduced, reduce, copies, keep)

    def _add_reduced(self, reduce, copies, keep) -> None:
        self.add(*reduce(*copies, keep))

    def arm(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback()`` once, when the backward pass reaches the next tensor reported here.

        The monitor's background worker starts then: ``backward()`` releases the GIL, so host work done
        during it does not slow the thread that launches kernels (see ``monitor._HostWorker``).
        """
        self._armed = callback

    def hook_backward(self, tensor: Any) -> None:
        """Fire the armed callback when the backward pass reaches ``tensor`` (a no-op for non-tensors)."""
        callback = self._armed
        if callback is None or not isinstance(tensor, torch.Tensor) or tensor.grad_fn is None:
            return
        self._armed = None

        def prehook(grad_outputs):
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - never break the user's backward pass
                logger.warning("aquin-monitor: backward pre-hook failed: %r", exc)
            return None  # the gradients pass unchanged

        tensor.grad_fn.register_prehook(prehook)

    def add_loss(self, loss: torch.Tensor) -> None:
        """Add a one-element loss value to this step's mean (anything else is ignored)."""
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        self.hook_backward(loss)
        value = loss.detach().float().reshape(())
        with self._lock:
            self._loss_sum = value if self._loss_sum is None else self._loss_sum + value.to(self._loss_sum.device)
            self._loss_count += 1

    def drain(self) -> TapReading:
        """What was reported since the last drain, reduced to device-side sums; the tap starts afresh."""
        self._reduce_deferred()
        with self._lock:
            reading = TapReading(self._sums, self._loss_sum, self._loss_count, self._pos, self._neg)
            self._reset()
            return reading

    def discard(self) -> None:
        """Drop what was reported since the last drain, without reducing it (a step not logged)."""
        with self._lock:
            self._reset()

    def guarded(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn``; on failure warn once and switch the tap off (re-raise when strict)."""
        if not self.enabled:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - monitoring must never kill training
            report_failure(what, exc, strict=self.strict, stacklevel=4)
            self.enabled = False


_default_tap = ContrastiveTap()


def default_tap() -> ContrastiveTap:
    """The process-wide tap that losses report to unless given another (one per DDP process).

    >>> default_tap() is default_tap()
    True
    """
    return _default_tap


def report_similarity(
    scores: torch.Tensor,
    positive_columns: torch.Tensor | None = None,
    *,
    block_size: int | None = None,
    scale: float = 1.0,
    tap: ContrastiveTap | None = None,
) -> None:
    """Report an anchors × candidates score matrix your loss computed (see :func:`similarity_sums`).

    One line in a LightningModule's ``training_step``::

        report_similarity(scores, scale=20.0)   # scores = 20 * cos_sim(queries, docs)

    A float32 copy is kept and reduced when the monitor drains the tap (after ``backward()``); a
    malformed matrix warns once and switches the tap off, never raising into training.

    Args:
        scores: ``[R, C]`` scores, row r an anchor, ``C`` a multiple of ``block_size``; ``-inf``
            entries (masked by the loss) are not counted.
        positive_columns: ``[R]`` column of each row's positive; default ``arange(R)``.
        block_size: width of one candidate block; columns ``k·block_size + p_r`` (``k ≥ 1``) are
            the row's labelled hard negatives. Default ``R``.
        scale: the factor the scores were multiplied by, so the statistics come out as similarities.
        tap: where to report; default the process-wide :func:`default_tap`.

    Example:
        ::

            >>> from aquin_monitor.signals.contrastive import finalize
            >>> tap = ContrastiveTap(strict=True)
            >>> scores = torch.tensor([[0.9, 0.2, 0.6, 0.1], [0.4, 0.7, 0.2, 0.3]])  # [in-batch | hard negatives]
            >>> report_similarity(20 * scores, block_size=2, scale=20.0, tap=tap)
            >>> # positives 0.9, 0.7; own hard negatives 0.6, 0.3; the other columns 0.2, 0.1, 0.4, 0.2
            >>> stats = finalize(tap.drain().sums)
            >>> round(stats["pos_sim"], 4), round(stats["neg_sim"], 4), round(stats["hard_neg_sim"], 4)
            (0.8, 0.225, 0.45)
    """
    _report_scores(scores, positive_columns, block_size, scale, tap or _default_tap, copy=True)


def _report_scores(scores, positive_columns, block_size, scale, tap: ContrastiveTap, *, copy: bool) -> None:
    """:func:`report_similarity`; ``copy=False`` when ``scores`` already is the reporter's own float32 copy."""

    def reduce(s: torch.Tensor, keep: bool):
        sums = similarity_sums(s, positive_columns, block_size=block_size, scale=scale)
        return (sums, *similarity_samples(s, positive_columns, scale=scale)) if keep else (sums, None, None)

    def _add() -> None:
        check_scores(scores, block_size)  # a malformed report fails here, in the loss call
        tap.hook_backward(scores)
        tap.defer("contrastive statistics", reduce, (scores,), copy=copy)

    tap.guarded("contrastive statistics", _add)


def report_triplet(
    positive_distance: torch.Tensor,
    negative_distance: torch.Tensor,
    *,
    distance_is_cosine: bool = False,
    tap: ContrastiveTap | None = None,
) -> None:
    """Report the anchor–positive and anchor–negative distances of a triplet loss.

    Similarity is ``1 − d`` for the cosine distance and ``−d`` otherwise, so ``contrastive/gap``
    is ``d(a, n) − d(a, p)`` and ``contrastive/in_batch_acc`` the fraction of triplets with
    ``d(a, p) < d(a, n)``.

    Args:
        positive_distance: ``[B]`` anchor–positive distances.
        negative_distance: ``[B]`` anchor–negative distances.
        distance_is_cosine: the distances are ``1 − cos`` (else Euclidean or another metric).
        tap: where to report; default the process-wide :func:`default_tap`.

    Example:
        ::

            >>> from aquin_monitor.signals.contrastive import finalize
            >>> tap = ContrastiveTap(strict=True)
            >>> report_triplet(torch.tensor([0.2, 0.6]), torch.tensor([0.5, 0.4]), distance_is_cosine=True, tap=tap)
            >>> stats = finalize(tap.drain().sums)
            >>> round(stats["pos_sim"], 4), round(stats["neg_sim"], 4), stats["in_batch_acc"]
            (0.6, 0.55, 0.5)
    """
    tap = tap or _default_tap

    def reduce(dp: torch.Tensor, dn: torch.Tensor, keep: bool):
        sums = triplet_sums(dp, dn, distance_is_cosine=distance_is_cosine)
        return (
            (sums, *triplet_similarities(dp, dn, distance_is_cosine=distance_is_cosine)) if keep else (sums, None, None)
        )

    def _add() -> None:
        check_triplet(positive_distance, negative_distance)
        tap.hook_backward(positive_distance)
        tap.defer("triplet statistics", reduce, (positive_distance, negative_distance))

    tap.guarded("triplet statistics", _add)


def report_loss(loss: torch.Tensor, *, tap: ContrastiveTap | None = None) -> None:
    """Report the loss value (used for the NaN alarm and the gap-narrowing alarm).

    The values reported over one optimizer step are averaged into ``contrastive/loss``; anything
    but a one-element tensor is ignored.

    >>> tap = ContrastiveTap()
    >>> report_loss(torch.tensor(2.0), tap=tap); report_loss(torch.tensor(4.0), tap=tap)
    >>> reading = tap.drain()
    >>> reading.loss_sum.item() / reading.loss_count
    3.0
    """
    tap = tap or _default_tap
    tap.guarded("loss capture", tap.add_loss, loss)


# ---------------------------------------------------------------------------------------------
# sentence-transformers losses
# ---------------------------------------------------------------------------------------------


class _Recording:
    """Per-forward state of a monitored loss: which calls to record and where positives sit."""

    def __init__(self) -> None:
        self.active = False
        self.calls = 0
        self.rows_seen = 0
        self.rows_target: int | None = None
        self.n_columns = 2
        self.done = False

    def begin(self, n_columns: int) -> None:
        self.active, self.calls, self.rows_seen, self.rows_target, self.done = True, 0, 0, None, False
        self.n_columns = n_columns

    def end(self) -> None:
        self.active = False


def _innermost_loss(loss: nn.Module) -> nn.Module:
    inner: Any = loss  # losses are nn.Modules with attributes torch cannot type (.loss, .similarity_fct)
    while (
        isinstance(getattr(inner, "loss", None), nn.Module)
        and not _owns(inner, "similarity_fct")
        and not _owns(inner, "distance_metric")
    ):
        inner = inner.loss
    return inner


def _owns(module: nn.Module, name: str) -> bool:
    return name in vars(module) or name in module._modules


class _ModuleWrapper(nn.Module):
    """Wraps a similarity that is an ``nn.Module`` (e.g. GISTEmbed's ``nn.CosineSimilarity``)."""

    def __init__(self, inner: nn.Module, record):
        super().__init__()
        self.inner = inner
        self._record = record

    def forward(self, a, b):
        out = self.inner(a, b)
        self._record(out, a, b)
        return out


def _root(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose memory ``t`` views (``t`` itself if it is no view)."""
    return t._base if t._base is not None else t


def _place(t: torch.Tensor) -> tuple:
    """Which memory ``t`` views: two views of one tensor with the same place hold the same values."""
    return id(_root(t)), t.storage_offset(), tuple(t.shape), tuple(t.stride())


class _GuidedRecording:
    """Reads GISTEmbedLoss / CachedGISTEmbedLoss, which send many matrices through one similarity.

    Their ``sim_matrix(x, y)`` calls ``similarity_fct(x.unsqueeze(1), y.unsqueeze(0))`` for the model's
    anchor–positive matrix, the guide's, and (by option and version) anchor–anchor, positive–positive
    and anchor–negative matrices of both, per mini-batch for the cached variant. They are told apart
    by the memory their inputs view, not by their order: the first call is on the anchors and the
    positives; a later call on (rows of) those anchors and those positives is the next mini-batch's
    anchor–positive matrix; a call on the anchors and a tensor that is not the anchors is an
    anchor–negative matrix (the hard negatives, in column order); everything else (the guide's
    matrices, anchor–anchor, positive–positive) is not read. Each mini-batch's ``[anchor–positive |
    anchor–negative …]`` copies, taken before the guide's in-place false-negative masking, form the
    layout of MultipleNegativesRankingLoss's matrix. Should the anchors ever share memory with the
    candidates (one merged forward pass over all columns), only the first anchor–positive matrix is read.
    """

    def __init__(self, owner: MonitoredLoss):
        self.owner = owner
        self.begin()

    def begin(self) -> None:
        self.anchors: torch.Tensor | None = None
        self.positives: tuple | None = None
        self.rows_seen = 0
        self.rows_target = 0
        self.chunk: list[torch.Tensor] = []
        self.done = False

    def record(self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        if not self.owner._rec.active or self.done:
            return
        self.owner.tap.guarded("contrastive statistics", self._record, out, a, b)

    def _record(self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.anchors is None:
            self.anchors, self.positives, self.rows_target = _root(a), _place(b), _root(a).shape[0]
            self.done = _root(b) is self.anchors  # anchors and candidates in one tensor: read this matrix only
        elif _root(a) is self.anchors and _place(b) == self.positives:
            self.flush()
            if self.done:
                return
        elif _root(a) is not self.anchors or _root(b) is self.anchors or not self.chunk:
            return  # the guide's matrices, anchor-anchor, positive-positive
        scores = out.squeeze() if out.ndim == 3 else out
        self.chunk.append(scores.detach().to(torch.float32, copy=True))  # before the in-place masking

    def flush(self) -> None:
        """Report the mini-batch read so far (also called when the loss returns)."""
        chunk, self.chunk = self.chunk, []
        if not chunk:
            return
        rows, width = chunk[0].shape
        rank, world = rank_and_world_size()
        offset = rank * self.rows_target if self.owner._gather and world > 1 else 0
        positives = torch.arange(offset + self.rows_seen, offset + self.rows_seen + rows, device=chunk[0].device)
        scores = chunk[0] if len(chunk) == 1 else torch.cat(chunk, dim=1)
        _report_scores(scores, positives, width, 1.0, self.owner.tap, copy=False)  # the chunk holds copies already
        self.rows_seen += rows
        self.done = self.done or self.rows_seen >= self.rows_target


class MonitoredLoss(nn.Module):
    """A sentence-transformers loss that also reports its contrastive statistics to a tap.

    The wrapped loss computes exactly what it computed before (same value, same gradients);
    the wrapper only reads, detached, the score matrix or distances the loss produced. Build it
    with :func:`monitored` (which documents what is read from which loss).

    Args:
        loss: The sentence-transformers loss to wrap (its ``similarity_fct`` or
            ``distance_metric`` is replaced by a reading one that returns the same values).
        tap: Where to report; default the process-wide :func:`default_tap`.

    Example::

        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from aquin_monitor.capture import monitored
        loss = monitored(MultipleNegativesRankingLoss(model))
        trainer = SentenceTransformerTrainer(model=model, loss=loss, callbacks=[TrainerEmbeddingMonitor()], ...)
    """

    def __init__(self, loss: nn.Module, tap: ContrastiveTap | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.tap = tap or _default_tap
        self._rec = _Recording()
        self._install()

    @property
    def model(self) -> nn.Module:
        """The wrapped loss's model (the sentence-transformers Trainer reads it)."""
        return cast(nn.Module, self.loss.model)

    def get_config_dict(self) -> dict[str, Any]:
        """The wrapped loss's configuration (written to the model card)."""
        return self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {}  # type: ignore[operator]  # a loss method torch types as a submodule

    @property
    def citation(self) -> str | None:
        """The wrapped loss's citation (written to the model card)."""
        return getattr(self.loss, "citation", None)

    def _install(self) -> None:
        inner: Any = _innermost_loss(self.loss)  # a sentence-transformers loss: attributes torch cannot type
        self._n_directions = len(getattr(inner, "directions", ("query_to_doc",)))
        self._gather = bool(getattr(inner, "gather_across_devices", False))
        if _owns(inner, "distance_metric"):
            original = inner.distance_metric
            try:  # sentence-transformers >= 6 (the old path warns that it is deprecated)
                from sentence_transformers.sentence_transformer.losses import TripletDistanceMetric
            except ImportError:
                from sentence_transformers.losses import TripletDistanceMetric  # type: ignore[no-redef]

            cosine = original is TripletDistanceMetric.COSINE
            distances: list[torch.Tensor] = []

            @functools.wraps(original)
            def recording_distance(a, b):
                out = original(a, b)
                if self._rec.active and not self._rec.done:
                    distances.append(out)
                    if len(distances) == 2:
                        self._rec.done = True
                        report_triplet(distances[0], distances[1], distance_is_cosine=cosine, tap=self.tap)
                        distances.clear()
                return out

            self._distances = distances
            inner.distance_metric = recording_distance
        elif _owns(inner, "similarity_fct"):
            original = inner.similarity_fct
            record: Callable[..., None] = self._record_scores
            if _owns(inner, "guide"):  # GISTEmbedLoss, CachedGISTEmbedLoss
                self._gist = _GuidedRecording(self)
                record = self._gist.record
            if isinstance(original, nn.Module):
                inner.similarity_fct = _ModuleWrapper(original, record)
            else:

                @functools.wraps(original)
                def recording_similarity(a, b):
                    out = original(a, b)
                    record(out, a, b)
                    return out

                inner.similarity_fct = recording_similarity
        else:
            raise TypeError(
                f"monitored() does not know how to read {type(self.loss).__name__}: it has no similarity_fct or "
                "distance_metric; report its scores with aquin_monitor.capture.report_similarity instead"
            )

    def _record_scores(self, scores: torch.Tensor, a=None, b=None) -> None:
        rec = self._rec
        if not rec.active or rec.done:
            return
        call = rec.calls
        rec.calls += 1
        if call % self._n_directions:  # query_to_doc is the first similarity of each (mini-)batch
            return
        self.tap.guarded("contrastive statistics", self._add_query_to_doc, scores)

    def _add_query_to_doc(self, scores: torch.Tensor) -> None:
        rec = self._rec
        if scores.ndim == 3:  # a similarity module broadcasting [B, 1, d] against [1, W, d] may keep a unit axis
            scores = scores.squeeze()
        rows, cols = scores.shape
        blocks = max(rec.n_columns - 1, 1)
        if cols % blocks:
            blocks = 1
        world_width = cols // blocks
        rank, world = rank_and_world_size()
        local_batch = world_width // world if self._gather and world > 1 else world_width
        offset = rank * local_batch if self._gather and world > 1 else 0
        if rec.rows_target is None:
            rec.rows_target = local_batch
        positives = torch.arange(offset + rec.rows_seen, offset + rec.rows_seen + rows, device=scores.device)
        report_similarity(scores, positives, block_size=world_width, tap=self.tap)
        rec.rows_seen += rows
        if rec.rows_seen >= rec.rows_target:
            rec.done = True

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None) -> Any:
        """The wrapped loss's output, its statistics reported on the way (training forwards only)."""
        features = list(sentence_features)
        model = getattr(self.loss, "model", None)
        if model is not None and not model.training:  # evaluation losses are not training statistics
            return self.loss(features, labels)
        self._rec.begin(len(features))
        if hasattr(self, "_distances"):
            self._distances.clear()
        gist = getattr(self, "_gist", None)
        if gist is not None:
            gist.begin()
        try:
            out = self.loss(features, labels)
            if gist is not None:
                self.tap.guarded("contrastive statistics", gist.flush)
                gist.begin()  # drop the references to this forward's embeddings
        finally:
            self._rec.end()
        if isinstance(out, torch.Tensor):
            report_loss(out, tap=self.tap)
        elif isinstance(out, dict):  # losses that return components: report their sum
            report_loss(sum(v for v in out.values()), tap=self.tap)
        return out


def monitored(loss: nn.Module, tap: ContrastiveTap | None = None) -> MonitoredLoss:
    """Wrap a sentence-transformers loss so the training monitor sees its contrastive statistics.

    The wrapped loss computes exactly what it computed before (same value, same gradients, bit for
    bit); the wrapper reads, detached, the first query→document score matrix (or the triplet
    distances) the loss computes in each training forward, and reports it with the loss value to
    ``tap``. The monitor turns those into ``contrastive/pos_sim`` (mean diagonal similarity),
    ``contrastive/neg_sim`` (mean off-diagonal in-batch similarity), ``contrastive/hard_neg_sim``
    (labelled hard-negative columns), ``contrastive/hardest_neg_sim``, ``contrastive/gap``,
    ``contrastive/in_batch_acc`` and ``contrastive/loss``. No extra forward pass; evaluation
    forwards (model in eval mode) are not read. Wrapping twice returns the same wrapper.

    Args:
        loss: A sentence-transformers loss (see the inputs table); anything else raises TypeError.
        tap: Where to report; default the process-wide :func:`default_tap`, which the monitor drains.

    Returns:
        A :class:`MonitoredLoss` to pass to ``SentenceTransformerTrainer(loss=...)``.

    Raises:
        TypeError: the loss has neither a ``similarity_fct`` nor a ``distance_metric`` to read.

    Inputs:
        +------------------------------------------------------+---------------------------------------------+
        | Loss                                                 | What is read                                |
        +======================================================+=============================================+
        | MultipleNegativesRankingLoss (and Symmetric, Cached) | anchor × [positives, hard negatives] scores |
        +------------------------------------------------------+---------------------------------------------+
        | GISTEmbedLoss, CachedGISTEmbedLoss                   | the model's anchor × candidate scores,      |
        |                                                      | before the guide's false-negative masking   |
        +------------------------------------------------------+---------------------------------------------+
        | TripletLoss                                          | anchor–positive, anchor–negative distances  |
        +------------------------------------------------------+---------------------------------------------+
        | MatryoshkaLoss / Matryoshka2dLoss around one of them | the full dimension's scores                 |
        +------------------------------------------------------+---------------------------------------------+

    Example:
        ::

            >>> import torch, torch.nn.functional as F
            >>> from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
            >>> from aquin_monitor.encoders import load_model
            >>> from aquin_monitor.signals.contrastive import finalize
            >>> model = load_model(device="cpu").train()
            >>> tap = ContrastiveTap()
            >>> loss = monitored(MultipleNegativesRankingLoss(model), tap=tap)
            >>> features = [
            ...     model.preprocess(["a cat sleeps", "stocks fell"]),
            ...     model.preprocess(["a kitten naps", "shares dropped"]),
            ... ]
            >>> _ = torch.manual_seed(0)  # the same dropout masks for both runs
            >>> value = loss(features, None)
            >>> _ = torch.manual_seed(0)
            >>> bool(value == MultipleNegativesRankingLoss(model)(features, None))  # the loss is unchanged
            True
            >>> _ = torch.manual_seed(0)
            >>> queries, documents = [F.normalize(model(dict(f))["sentence_embedding"]) for f in features]
            >>> stats = finalize(tap.drain().sums)
            >>> abs(stats["pos_sim"] - (queries @ documents.T).diag().mean().item()) < 1e-6
            True
    """
    if isinstance(loss, MonitoredLoss):
        return loss
    return MonitoredLoss(loss, tap)
