"""What every ``aquin-monitor`` verb shares: argument types, the one input error, output checks, ``emit``.

The main CLI (:mod:`aquin_monitor.cli`) and each ``sae`` verb module import from here and from
nowhere above (so no verb module imports another). Everything here runs before a model is loaded
and imports torch only when a function that needs it is called.

- :class:`CommandParser`: argparse, with a usage error as one line (``--help`` shows the usage).
- :func:`positive_int`, :func:`finite_float`: argparse types (a bad value is a usage error, exit 2).
- :class:`InputError`: bad command input, one line ``<where>[:<line>]: <field or flag>: <problem>``;
  the main CLI prints it as ``aquin-monitor <verb>: error: ...`` with exit status 2.
- :func:`check_output_file`, :func:`check_output_dir`, :func:`check_declared_outputs`: every path a verb
  will write, checked before anything is read or loaded (nothing is created here).
- :func:`emit`: the result as a table on stdout and, with ``--json OUT``, as JSON written atomically
  (``--json -``: JSON on stdout instead of the table).
- :func:`load_sae_for`: load a SAE, find its model (``--model`` or the one its ``cfg.json`` records)
  and check the SAE's input size against the embedding size the model's files declare.

>>> str(InputError("probe.jsonl", "need at least 2 texts, got 1", line=1, field="text"))
'probe.jsonl:1: text: need at least 2 texts, got 1'
>>> str(InputError("<command line>", "must be finite, got nan", field="--delta"))
'<command line>: --delta: must be finite, got nan'
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "NEGATIVE_NUMBER",
    "TERMINAL_CONTROLS",
    "CommandParser",
    "InputError",
    "bounded_float",
    "cache_option",
    "check_command_text",
    "check_declared_outputs",
    "check_output_dir",
    "check_output_file",
    "declare_outputs",
    "emit",
    "finite_float",
    "non_negative_int",
    "note",
    "positive_int",
    "print_lines",
    "read_corpus",
    "refuse_non_finite",
    "terminal_safe",
    "torch_device",
]


class InputError(ValueError):
    """Bad command input: ``str()`` is one line ``<where>[:<line>]: <field>: <problem>``.

    ``where`` is a file or ``<command line>``; ``field`` a record field or a flag (``--json``).
    """

    def __init__(
        self, where: str | os.PathLike, problem: str, *, line: int | None = None, field: str | None = None
    ) -> None:
        self.where, self.line, self.field, self.problem = str(where), line, field, problem
        location = self.where if line is None else f"{self.where}:{line}"
        super().__init__(f"{location}: {field}: {problem}" if field else f"{location}: {problem}")


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, exit status 2, like every other bad input.

    >>> parser = CommandParser(prog="tool")
    >>> _ = parser.add_argument("--top", type=positive_int)
    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     try:
    ...         parser.parse_args(["--top", "0"])
    ...     except SystemExit as exit_:
    ...         print(exit_.code)
    2
    >>> print(err.getvalue().strip())
    tool: error: argument --top: expected a positive integer, got 0 (tool --help shows the usage)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse's own hook: its default reads -1e-3 and -inf as unknown options ("expected one argument")
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> typing.NoReturn:
        self.exit(
            2, f"{self.prog}: error: {terminal_safe(' '.join(message.split()))} ({self.prog} --help shows the usage)\n"
        )


#: Option values argparse must read as values, not as unknown options: ``-1e-3``, ``-.5``, ``-inf``, ``-nan``.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1.

    >>> positive_int("3")
    3
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a positive integer, got 0
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float (``nan`` and ``inf`` are refused).

    >>> finite_float("2.5e-4")
    0.00025
    >>> finite_float("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number, got 'nan'
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# --------------------------------------------------------------------------------------------
# Output paths, checked before anything is loaded


def bounded_float(low: float, high: float) -> Any:
    """argparse type factory: a finite float in ``[low, high]`` (NaN, which compares false with everything,
    would otherwise select nothing or everything silently).

    >>> bounded_float(0, 1)("0.5")
    0.5
    >>> bounded_float(-1, 1)("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number in [-1, 1], got 'nan'
    """

    def parse(text: str) -> float:
        try:
            value = finite_float(text)
        except argparse.ArgumentTypeError:
            value = math.nan
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a finite number in [{low:g}, {high:g}], got {text!r}")
        return value

    parse.__name__ = f"number in [{low:g}, {high:g}]"
    return parse


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0 (``sae faithfulness --random 0``: no random baseline).

    >>> non_negative_int("0")
    0
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def torch_device(text: str) -> str:
    """argparse type: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked before
    any model loads (torch is imported only when ``--device`` is given)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:0, mps)") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{text!r}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: unsupported device type (cpu, cuda or mps)")
    return text


def cache_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-cache`` (``args.cache``): neither read nor write the embedding cache."""
    parser.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="neither read nor write the embedding cache ($AQUIN_MONITOR_CACHE, default ~/.cache/aquin-monitor)",
    )


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """``path`` can be written as a file: not a folder, not read-only, and its folder exists writable or can be made."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder; give a file name", field=flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(path, "the file is not writable", field=flag)
    _check_creatable(path.parent, flag, path)


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """``path`` is a writable folder or can be made one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "is a file, not a folder", field=flag)
    _check_creatable(path, flag, path)


def _check_creatable(folder: Path, flag: str, shown: Path) -> None:
    """``folder`` exists as a writable folder, or can be made: its nearest existing ancestor is one."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(shown, f"{existing} is a file, not a folder", field=flag)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(shown, f"the folder {existing} is not writable", field=flag)


def declare_outputs(parser: argparse.ArgumentParser, *, files: Sequence[str] = (), folders: Sequence[str] = ()) -> None:
    """Record which flags of ``parser`` name files / folders it writes, for :func:`check_declared_outputs`."""
    parser.set_defaults(output_files=tuple(files), output_folders=tuple(folders))


def check_declared_outputs(args: argparse.Namespace) -> None:
    """Check ``--json`` (``-`` is stdout) and every output flag the verb declared, before any model loads."""
    json_out = getattr(args, "json", None)
    if json_out and json_out != "-":
        check_output_file(json_out, "--json")
    for kind, check in (("output_files", check_output_file), ("output_folders", check_output_dir)):
        for flag in getattr(args, kind, ()):
            value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
            if value:
                check(value, flag)


# --------------------------------------------------------------------------------------------
# Results


#: Characters a terminal may act on: C0 controls (ESC starts CSI/OSC sequences, BEL ends OSC), DEL, C1 controls
#: (CSI, OSC and ST as single bytes) and the bidirectional overrides that reorder what is shown.
TERMINAL_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with every terminal control character shown as its escape (``\\x1b``), so a label or text from a
    user's file prints as itself and cannot set the title, clear the screen or move the cursor; also one line.

    >>> terminal_safe("feature \\x1b]0;pwned\\x07 \\x1b[2J\\u202egnp.exe\\nnext")
    'feature \\\\x1b]0;pwned\\\\x07 \\\\x1b[2J\\\\u202egnp.exe\\\\nnext'
    """
    return TERMINAL_CONTROLS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def print_lines(lines: str | Sequence[str], file: Any = None) -> None:
    """Print a table (lines, or one string of lines) with each line made :func:`terminal_safe`: the one way every
    verb prints user-derived text (labels, texts, categories, file names) to the terminal."""
    rows = lines.split("\n") if isinstance(lines, str) else lines
    print("\n".join(terminal_safe(row) for row in rows), file=file)


def note(text: str) -> None:
    """A line for the person at the terminal (stderr: stdout stays the result), terminal-safe."""
    print_lines(text, file=sys.stderr)


def emit(result: Any, json_out: str | None, table: str | Sequence[str]) -> None:
    """Write ``result`` as JSON to ``json_out`` atomically, then print ``table`` (terminal-safe); ``"-"``: JSON on
    stdout only. The file comes first: a reader that closes stdout early (``| head -1``) cannot lose it.

    Non-finite numbers become ``null`` (:func:`~aquin_monitor.sinks.jsonl.to_jsonable`); text is written as UTF-8.
    """
    from .atomic import atomic_write_text
    from .jsonio import to_jsonable

    text = json.dumps(to_jsonable(result), indent=1, ensure_ascii=False, allow_nan=False)
    if json_out == "-":
        print(text)
        return
    if json_out:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
        note(f"wrote {out}")
    print_lines(table)


def refuse_non_finite(embeddings: Any, texts: Sequence[str], model: str) -> None:
    """Raise :class:`InputError` (naming the first bad row and its text) when an embedding holds NaN or inf: every
    SAE number computed from it would be NaN or meaningless (FVU null, every feature dead)."""
    import numpy as np

    bad = np.flatnonzero(~np.isfinite(np.asarray(embeddings)).all(axis=1))
    if bad.size:
        row = int(bad[0])
        raise InputError(
            f"model {model!r}",
            f"embedding row {row} (text {texts[row][:60]!r}) is not finite (NaN or inf), "
            f"{bad.size} of {len(texts)} rows; are the model's weights broken?",
        )


def check_command_text(text: str, what: str) -> str:
    """A text given on the command line: not empty, no NUL, valid Unicode (bytes that are not UTF-8 arrive as
    lone surrogates); else :class:`InputError` naming ``what`` (``TEXT``, ``QUERY``)."""
    from .data import unencodable_text

    if not text.strip():
        raise InputError("<command line>", "empty text", line=1, field=what)
    problem = unencodable_text(text)
    if problem:
        raise InputError("<command line>", problem, line=1, field=what)
    return text


# --------------------------------------------------------------------------------------------
# A SAE and its model


def read_corpus(path: str, field: str, minimum: int = 2) -> list[str]:
    """The texts of a JSONL corpus (one text per line in ``field``); at least ``minimum`` of them."""
    from .data import read_probe

    texts = list(read_probe(path, text_field=field, label_field=None, id_field=None).texts)
    if len(texts) < minimum:
        raise InputError(path, f"need at least {minimum} texts, got {len(texts)}", line=1, field=field)
    return texts
