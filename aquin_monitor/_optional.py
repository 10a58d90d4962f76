"""Import optional dependencies with one clear message naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

# module name -> extra of aquin-monitor that installs it
_EXTRAS = {
    "lightning": "lightning",
    "wandb": "wandb",
    "peft": "peft",
    "umap": "umap",
    "tensorboard": "tensorboard",
    "faiss": "faiss",
    "torch.utils.tensorboard": "tensorboard",
}


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install.

    >>> require("json", "reading JSON").__name__
    'json'
    >>> require("tensorboard.no_such_module", "Writing TensorBoard events")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    aquin_monitor._optional.MissingDependencyError: Writing TensorBoard events needs the optional dependency
    'tensorboard.no_such_module', which is not installed: pip install 'aquin-monitor[tensorboard]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRAS.get(module, _EXTRAS.get(module.split(".")[0], "all"))
        raise MissingDependencyError(
            f"{purpose} needs the optional dependency '{module}', which is not installed: "
            f"pip install 'aquin-monitor[{extra}]'"
        ) from exc
