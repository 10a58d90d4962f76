"""Choose sinks from a Hugging Face / sentence-transformers ``TrainingArguments.report_to``."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from aquin_monitor.sinks.base import Sink

logger = logging.getLogger(__name__)

#: Integrations this package has a sink for; other ``report_to`` entries are left to HF alone.
SUPPORTED_REPORTS = ("tensorboard", "wandb")

#: The x-axis HF's WandbCallback declares for every metric; after an optimizer step it equals the monitor's step.
HF_STEP_KEY = "train/global_step"


def report_targets(report_to: Any) -> list[str]:
    """Normalise ``report_to`` as HF does: ``None``/``"none"``/``[]`` -> ``[]``, a string -> ``[it]``,
    ``"all"`` -> every supported integration that is installed.

    >>> report_targets("none"), report_targets(["tensorboard", "mlflow"]), report_targets(None)
    ([], ['tensorboard', 'mlflow'], [])
    """
    if report_to is None:
        return []
    targets = [report_to] if isinstance(report_to, str) else list(report_to)
    if targets in (["none"], []):
        return []
    if "all" in targets:
        return [name for name in SUPPORTED_REPORTS if importlib.util.find_spec(name) is not None]
    return targets


def tensorboard_dir(args: Any, run_dir: str | os.PathLike) -> str:
    """Where our TensorBoard events go: ``args.logging_dir`` (transformers 4.x), else
    ``$TENSORBOARD_LOGGING_DIR`` (what transformers 5.x's TensorBoardCallback reads), else
    ``<args.output_dir>/runs/aquin-monitor`` (beside the HF callback's ``runs/<date>_<host>``, so
    ``tensorboard --logdir <output_dir>/runs`` shows both), else ``<run_dir>/tensorboard``.
    """
    logging_dir = getattr(args, "logging_dir", None) or os.environ.get("TENSORBOARD_LOGGING_DIR")
    if logging_dir:
        return os.path.expanduser(logging_dir)
    output_dir = getattr(args, "output_dir", None)
    if output_dir:
        return os.path.join(output_dir, "runs", "aquin-monitor")
    return os.path.join(os.fspath(run_dir), "tensorboard")


def sinks_for_hf(args: Any, run_dir: str | os.PathLike) -> list[Sink]:
    """Sinks that follow ``args.report_to``: ``"tensorboard"`` -> :class:`TensorBoardSink` at
    :func:`tensorboard_dir`, ``"wandb"`` -> :class:`WandbSink` (it joins the run HF's
    ``WandbCallback`` opens, resolved at the first write, and logs on its ``train/global_step`` axis),
    ``"none"``/``[]`` -> none.

    The JSONL sink is not included: the caller always adds ``JsonlSink(run_dir)``. Call on the
    main process only (``state.is_world_process_zero``).
    """
    sinks: list[Sink] = []
    for target in report_targets(getattr(args, "report_to", None)):
        if target == "tensorboard":
            from aquin_monitor.sinks.tensorboard import TensorBoardSink

            sinks.append(TensorBoardSink(log_dir=tensorboard_dir(args, run_dir)))
        elif target == "wandb":
            from aquin_monitor.sinks.wandb import WandbSink

            sinks.append(
                WandbSink(step_key=HF_STEP_KEY)
            )  # HF's own axis: one step axis for the trainer's rows and ours
        else:
            logger.info("aquin-monitor has no sink for report_to=%r; its metrics go to JSONL only", target)
    return sinks
