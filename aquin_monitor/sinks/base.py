"""The one protocol every sink speaks, :class:`BaseSink` (its optional methods as no-ops), and
:class:`MultiSink`, which fans a call out to many.

Sinks never compute a signal: they write what they are given. The only shaping they do is
formatting (a float to JSON, a nested record to ``a/b`` scalar tags).
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)


class SinkWarning(RuntimeWarning):
    """A sink failed and was switched off; training goes on."""


@runtime_checkable
class Sink(Protocol):
    """Where monitor results go: TensorBoard, Weights & Biases, JSONL files, a Lightning logger.

    Every method writes what it is given and computes nothing. ``step`` is the optimizer
    step the values belong to.
    """

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        """Write named scalars (``grad_norm/layer.00``, ``contrastive/gap``, ...) at ``step``."""
        ...

    def log_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        """Write the distribution of ``values`` (e.g. positive-pair similarities) at ``step``."""
        ...

    def log_event(self, event: Mapping[str, Any]) -> None:
        """Write an alarm ``{"step", "kind", "layer", "message", "value"}``.

        TensorBoard and W&B show it as text plus a scalar ``alarm/<kind>`` = 1 at its step.
        """
        ...

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        """Write a matplotlib Figure. The caller owns the figure and closes it."""
        ...

    def log_embeddings(self, tag: str, embeddings: np.ndarray, labels: Sequence[str] | None, step: int) -> None:
        """Write an (n, d) embedding matrix with optional per-row labels (TB projector, W&B table).

        A :class:`BaseSink` also takes ``texts=`` (one text per row; TensorBoard and W&B show them);
        a sink that implements only this protocol is called without it (:func:`as_sink`).
        """
        ...

    def log_summary(self, metrics: Mapping[str, Any], step: int) -> None:
        """Write a snapshot's JSON-able record (TensorBoard and W&B keep its numbers only)."""
        ...

    def flush(self) -> None:
        """Push buffered writes to storage."""
        ...

    def close(self) -> None:
        """Flush and release what this sink opened (never what it borrowed)."""
        ...


class BaseSink:
    """Base class of the bundled sinks: the optional capabilities, each a documented no-op here.

    Like Lightning's ``Logger.log_graph``: a caller calls every method on every sink and a sink that has
    nothing to do for it inherits the no-op, so no caller asks ``hasattr``. Subclasses implement the
    :class:`Sink` protocol (``log_embeddings`` with an extra ``texts=None``) and override what they keep.
    A sink that implements only the protocol is seen through :func:`as_sink`.
    """

    @property
    def sink_name(self) -> str:
        """The name a warning shows for this sink (its class)."""
        return type(self).__name__

    # The required protocol (see :class:`Sink`): a subclass writes each of these.

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        raise NotImplementedError(f"{type(self).__name__}.log_scalars")

    def log_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        raise NotImplementedError(f"{type(self).__name__}.log_histogram")

    def log_event(self, event: Mapping[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__}.log_event")

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        raise NotImplementedError(f"{type(self).__name__}.log_figure")

    def log_embeddings(
        self,
        tag: str,
        embeddings: np.ndarray,
        labels: Sequence[str] | None,
        step: int,
        texts: Sequence[str] | None = None,
    ) -> None:
        raise NotImplementedError(f"{type(self).__name__}.log_embeddings")

    def log_summary(self, metrics: Mapping[str, Any], step: int) -> None:
        raise NotImplementedError(f"{type(self).__name__}.log_summary")

    def flush(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.flush")

    def close(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.close")

    # Optional capabilities: no-ops unless a subclass has something to do.

    def log_evaluation(self, metrics: Mapping[str, Any], step: int) -> None:
        """The trainer's own evaluation metrics (``eval_loss``, ...) at ``step``; only the run's files keep them."""

    def rewind(self, step: int) -> None:
        """Drop what was logged after ``step`` (a resumed run replays those steps); a sink that cannot, does nothing."""

    def archive_previous_run(self) -> Any:
        """Move what an earlier run left where this sink writes aside (a fresh start); returns where it went, or
        None."""
        return None

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Record the run's settings and hyperparameters, for a dashboard that keeps a run config (W&B)."""


class ProtocolSink(BaseSink):
    """A sink that implements only the required :class:`Sink` protocol, with :class:`BaseSink`'s no-ops for the rest.

    >>> class Printer:
    ...     def log_scalars(self, metrics, step):
    ...         print(step, dict(metrics))
    >>> sink = as_sink(Printer())
    >>> sink.log_scalars({"contrastive/gap": 0.5}, 3); sink.rewind(2); sink.sink_name
    3 {'contrastive/gap': 0.5}
    'Printer'
    """

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    @property
    def sink_name(self) -> str:
        return type(self.sink).__name__

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        self.sink.log_scalars(metrics, step)

    def log_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        self.sink.log_histogram(tag, values, step)

    def log_event(self, event: Mapping[str, Any]) -> None:
        self.sink.log_event(event)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        self.sink.log_figure(tag, figure, step)

    def log_embeddings(
        self,
        tag: str,
        embeddings: np.ndarray,
        labels: Sequence[str] | None,
        step: int,
        texts: Sequence[str] | None = None,
    ) -> None:
        self.sink.log_embeddings(tag, embeddings, labels, step)  # the protocol's four arguments: no texts

    def log_summary(self, metrics: Mapping[str, Any], step: int) -> None:
        self.sink.log_summary(metrics, step)

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


def as_sink(sink: Any) -> BaseSink:
    """``sink`` itself when it is a :class:`BaseSink`, else seen through :class:`ProtocolSink`."""
    return sink if isinstance(sink, BaseSink) else ProtocolSink(sink)


def check_step(step: Any) -> int:
    """Return ``step`` as an ``int``; raise :class:`ValueError` unless it is a non-negative integer.

    >>> check_step(np.int64(4))
    4
    >>> check_step(2.5)
    Traceback (most recent call last):
    ...
    ValueError: step must be a non-negative integer, got 2.5
    """
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return int(step)


def validate_event(event: Mapping[str, Any]) -> None:
    """Raise :class:`ValueError` unless ``event`` has an int ``step`` and a non-empty str ``kind``.

    >>> validate_event({"step": 3, "kind": "spike", "layer": "layer.01", "message": "", "value": 9.0})
    >>> validate_event({"kind": "spike"})
    Traceback (most recent call last):
    ...
    ValueError: an alarm event needs a non-negative integer 'step', got None
    """
    step = event.get("step")
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"an alarm event needs a non-negative integer 'step', got {step!r}")
    kind = event.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"an alarm event needs a non-empty string 'kind', got {kind!r}")


def event_text(event: Mapping[str, Any]) -> str:
    """One Markdown line describing an alarm, as shown in TensorBoard's text tab and W&B.

    >>> event_text({"step": 7, "kind": "nan", "layer": "layer.03", "message": "NaN in grads", "value": None})
    'step 7 · **nan** · layer `layer.03` · NaN in grads'
    """
    parts = [f"step {event.get('step')}", f"**{event.get('kind')}**"]
    if event.get("layer") is not None:
        parts.append(f"layer `{event['layer']}`")
    if event.get("message"):
        parts.append(str(event["message"]))
    if event.get("value") is not None:
        parts.append(f"value {event['value']:.6g}" if _is_number(event["value"]) else f"value {event['value']}")
    return " · ".join(parts)


def numeric_items(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten the numbers of a nested record into ``{"a/b": float}``; other leaves are dropped.

    Used where a sink keeps scalars only (a snapshot's record in TensorBoard / W&B). Booleans
    and strings are dropped; NaN and inf are kept (they are information for a dashboard).

    >>> numeric_items({"geometry": {"anisotropy": 0.25, "note": "x"}, "n": 3, "ok": True})
    {'geometry/anisotropy': 0.25, 'n': 3.0}
    """
    flat: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(numeric_items(value, name))
        elif _is_number(value):
            flat[name] = float(value)
        elif isinstance(value, np.ndarray) and value.ndim == 0 and _is_number(value.item()):
            flat[name] = float(value.item())
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def finite_values(values: Any) -> np.ndarray:
    """The finite entries of ``values`` as a flat float64 array (histograms cannot bin NaN/inf).

    >>> finite_values([1.0, float("nan"), 2.0, float("inf")]).tolist()
    [1.0, 2.0]
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    return array[np.isfinite(array)]


class MultiSink(BaseSink):
    """Fan every call out to several sinks; a failing part is warned about once and switched off alone.

    Monitoring must never kill training, and one failing part must not silence the rest: the
    first exception raised by one sink's call kind (``log_scalars``, ``log_embeddings``, ...)
    or, for figures, by one sink's figure tag, is reported with :func:`warnings.warn`
    (:class:`SinkWarning`) and :mod:`logging`, then that part alone is skipped for the rest of
    the run. The same sink's other calls, its other figures and every other sink carry on (a
    figure that cannot be drawn never stops the scalars of later steps). ``strict=True``
    re-raises instead (for tests).

    >>> class FullDisk:
    ...     def log_scalars(self, metrics, step):
    ...         pass
    ...     def log_embeddings(self, tag, embeddings, labels, step):
    ...         raise OSError("No space left on device")
    >>> import warnings
    >>> sink = MultiSink([FullDisk()])
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     sink.log_embeddings("probe", np.zeros((2, 2)), None, step=1)
    ...     sink.log_embeddings("probe", np.zeros((2, 2)), None, step=2)
    ...     sink.log_scalars({"contrastive/gap": 0.5}, step=2)
    >>> len(caught), sink.switched_off
    (1, [('FullDisk', 'log_embeddings')])
    """

    def __init__(self, sinks: Sequence[Sink] = (), *, strict: bool = False) -> None:
        self.sinks: list[BaseSink] = [as_sink(sink) for sink in sinks]
        self.strict = strict
        self._disabled: dict[tuple[int, str], str] = {}  # (id(sink), part) -> sink class name

    @property
    def switched_off(self) -> list[tuple[str, str]]:
        """``(sink class name, part)`` of every part switched off, e.g.
        ``("JsonlSink", "log_figure snapshot/umap")``."""
        return [(name, part) for (_, part), name in self._disabled.items()]

    def add(self, sink: Sink) -> None:
        """Add one more sink."""
        self.sinks.append(as_sink(sink))

    def _call(self, method: str, *args: Any, part: str | None = None, **kwargs: Any) -> None:
        """Call ``method`` on every sink whose ``part`` (default: the method) is on."""
        part = part or method
        for sink in self.sinks:
            if (id(sink), part) in self._disabled:
                continue
            try:
                getattr(sink, method)(*args, **kwargs)
            except Exception as exc:
                if self.strict:
                    raise
                self._switch_off(sink, part, exc)

    def _switch_off(self, sink: BaseSink, part: str, exc: BaseException) -> None:
        self._disabled[(id(sink), part)] = sink.sink_name
        message = (
            f"aquin-monitor: sink {sink.sink_name} failed in {part} with "
            f"{type(exc).__name__}: {_first_line(exc)}; this part alone is switched off for the rest of the "
            "run (its other calls and the other sinks go on; pass strict=True to raise instead)"
        )
        logger.warning(message, exc_info=exc)
        warnings.warn(message, SinkWarning, stacklevel=4)

    def log_scalars(self, metrics: Mapping[str, float], step: int) -> None:
        self._call("log_scalars", metrics, step)

    def log_histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        self._call("log_histogram", tag, values, step)

    def log_event(self, event: Mapping[str, Any]) -> None:
        self._call("log_event", event)

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        self._call("log_figure", tag, figure, step, part=f"log_figure {tag}")

    def log_embeddings(
        self,
        tag: str,
        embeddings: np.ndarray,
        labels: Sequence[str] | None,
        step: int,
        texts: Sequence[str] | None = None,
    ) -> None:
        """Forward to every sink (``texts`` reaches the :class:`BaseSink` ones; see :func:`as_sink`)."""
        self._call("log_embeddings", tag, embeddings, labels, step, texts=texts)

    def log_summary(self, metrics: Mapping[str, Any], step: int) -> None:
        self._call("log_summary", metrics, step)

    def log_evaluation(self, metrics: Mapping[str, Any], step: int) -> None:
        """Forward the trainer's own evaluation metrics to the sinks that keep them (the plain files)."""
        self._call("log_evaluation", metrics, step)

    def rewind(self, step: int) -> None:
        """Forward to the sinks that can drop what was logged after ``step`` (resume)."""
        self._call("rewind", step)

    def archive_previous_run(self) -> None:
        """Forward to the sinks that can move an earlier run's files aside (fresh start)."""
        self._call("archive_previous_run")

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Forward the run config to the sinks that keep one (W&B)."""
        self._call("update_config", values)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")


def send_embeddings(
    sink: Any,
    tag: str,
    embeddings: np.ndarray,
    labels: Sequence[str] | None,
    step: int,
    texts: Sequence[str] | None = None,
) -> None:
    """Call ``sink.log_embeddings``; ``texts=`` reaches a :class:`BaseSink` (a protocol-only sink gets four arguments).

    >>> class Old:
    ...     def log_embeddings(self, tag, embeddings, labels, step):
    ...         print("old", labels)
    >>> class New(BaseSink):
    ...     def log_embeddings(self, tag, embeddings, labels, step, texts=None):
    ...         print("new", labels, texts)
    >>> for sink in (Old(), New()):
    ...     send_embeddings(sink, "probe", np.zeros((1, 2)), ["a"], 3, texts=["some text"])
    old ['a']
    new ['a'] ['some text']
    """
    as_sink(sink).log_embeddings(tag, embeddings, labels, step, texts=texts)


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (mathtext errors start with a newline)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else ""
