"""JSON on the ground floor: plain-JSON conversion and JSON Lines reading, shared by every writer and reader.

The sinks (:mod:`aquin_monitor.sinks.jsonl`), the snapshot record, the report and the CLI all read and
write JSON through these functions, so "a NaN is ``null``" and "a bad line is named ``file:line``" hold
everywhere. Nothing from the package is imported here.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["JsonlFormatError", "iter_jsonl", "json_line", "read_jsonl", "to_jsonable"]


class JsonlFormatError(ValueError):
    """A JSON Lines file holds a line that is not a JSON object; the message names file and line."""


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` to plain JSON types; non-finite floats become ``None`` (JSON ``null``).

    numpy scalars and arrays (and anything with ``.tolist()``, e.g. a torch tensor) become
    Python numbers and lists; mappings need string keys. Raises :class:`TypeError` for
    anything else, rather than writing its ``repr``.

    >>> to_jsonable({"a": float("nan"), "b": np.float32(0.5), "c": np.array([1.0, np.inf])})
    {'a': None, 'b': 0.5, 'c': [1.0, None]}
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, got {key!r}")
            out[key] = to_jsonable(item)
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    raise TypeError(f"cannot write a {type(value).__name__} as JSON: {value!r}")


def json_line(record: Mapping[str, Any]) -> str:
    """Serialise one record as a JSON line (ending in a newline), NaN/inf as ``null``.

    >>> json_line({"step": 3, "contrastive/gap": float("nan")})
    '{"step": 3, "contrastive/gap": null}\\n'
    """
    return json.dumps(to_jsonable(record), allow_nan=False, ensure_ascii=False) + "\n"


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, str, Any, str | None]]:
    """``(line number, line, record, problem)`` for each non-blank line of a JSON Lines file.

    ``problem`` is None for a JSON object, else what is wrong with the line (``record`` is then the
    parsed value, or None for invalid JSON or bytes that are not UTF-8; each line is decoded on its
    own, so one bad byte costs one line, named, never a silent U+FFFD). Readers decide whether a
    problem raises or is skipped.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not valid UTF-8 (byte {exc.start + 1} of the line is 0x{raw[exc.start]:02x})"
                yield number, raw.decode("utf-8", errors="replace"), None, problem
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, line, None, f"invalid JSON ({exc.msg}, column {exc.colno})"
                continue
            problem = None if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
            yield number, line, record, problem


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON Lines file into a list of dicts; blank lines are skipped.

    Raises :class:`JsonlFormatError` naming the file and the 1-based line number when a line
    is not UTF-8, not valid JSON or not a JSON object.
    """
    records = []
    for number, line, record, problem in iter_jsonl(path):
        if problem is not None:
            excerpt = f": {line[:120]!r}" if record is None else ""
            raise JsonlFormatError(f"{path}, line {number}: {problem}{excerpt}")
        records.append(record)
    return records
