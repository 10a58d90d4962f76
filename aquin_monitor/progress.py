"""Progress bars on stderr: one labelled bar per long step, and one switch that silences them all.

Every long step (a snapshot's probe pass, its UMAP layout, encoding queries and documents) shows a
``tqdm`` bar whose ``desc`` says what it counts; each takes an ``enabled``/``show_progress`` switch.
:func:`quiet_progress` silences, for a block, the bars the libraries draw on their own (model loading in transformers,
downloads in huggingface_hub): together they are the CLI's ``--no-progress``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["phase", "quiet_progress"]


@contextlib.contextmanager
def phase(desc: str, enabled: bool = True) -> Iterator[None]:
    """A one-step bar labelled ``desc`` around a step that has no finer progress (e.g. a UMAP fit).

    Args:
        desc: what the step does, shown as the bar's label.
        enabled: False shows nothing.

    Example:
        >>> with phase("UMAP 2-D layout of 12 probe texts", enabled=False):
        ...     pass
    """
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    with tqdm(total=1, desc=desc, unit="step") as bar:
        yield
        bar.update(1)


@contextlib.contextmanager
def quiet_progress(quiet: bool = True) -> Iterator[None]:
    """Silence the progress bars of transformers and huggingface_hub inside the block (``quiet=False``:
    change nothing); both are restored afterwards. (tqdm's ``TQDM_DISABLE`` is read when tqdm is
    imported, too early for a switch; our own bars and ``encode``'s take ``show_progress``.)

    Example:
        >>> from transformers.utils import logging
        >>> with quiet_progress():
        ...     logging.is_progress_bar_enabled()
        False
    """
    if not quiet:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    hub_was_off = are_progress_bars_disabled()
    transformers_was_on = transformers_logging.is_progress_bar_enabled()
    disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if transformers_was_on:
            transformers_logging.enable_progress_bar()
