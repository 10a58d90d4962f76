"""How a failing part of the monitor is reported: once, as a warning, and training goes on.

Monitoring must never kill a training run (DESIGN.md). Every guarded part (the per-step monitor, the
loss tap, a snapshot) reports its failure through :func:`report_failure`, which re-raises under
``strict=True`` (tests) and otherwise logs one warning; the caller then switches that part alone off.
"""

from __future__ import annotations

import logging
import warnings

logger = logging.getLogger("aquin_monitor")


def report_failure(
    what: str, exc: BaseException, *, strict: bool, outcome: str = "is switched off for this run", stacklevel: int = 3
) -> None:
    """Re-raise ``exc`` when ``strict``; otherwise log and warn once that ``what`` failed and ``outcome``.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     report_failure("flushing", OSError("disk full"), strict=False)
    >>> str(caught[0].message)
    "aquin-monitor: flushing failed and is switched off for this run: OSError('disk full')"
    """
    if strict:
        raise exc
    message = f"aquin-monitor: {what} failed and {outcome}: {exc!r}"
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
