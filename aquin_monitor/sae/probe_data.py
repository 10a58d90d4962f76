"""Labelled train/test splits for k-sparse probing: the shipped Banking77 and AG News sets, or any labelled JSONL.

Splits (seeded by ``numpy.random.default_rng(seed)``):

- ``banking77``: the shipped train file (10,003 rows, a uniform draw of ``max_train`` of them) and test file
  (3,080 rows, a draw of ``max_test``);
- ``agnews``: only the AG News *test* file is shipped (7,600 rows, 1,900 per topic): a seeded permutation, its
  first half is the probe's train split and its second half the test split, each then cut to its cap;
- any labelled JSONL (``text`` and ``label`` fields, :func:`~aquin_monitor.data.read_probe`): the same half/half
  permutation split.

>>> splits = shipped_probe_splits(max_train=100, max_test=50)
>>> [(s.name, len(s.train_texts), len(s.test_texts)) for s in splits]
[('banking77', 100, 50), ('agnews', 100, 50)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import DataError, bundled_dataset, read_probe

__all__ = ["LabelledSplits", "labelled_file_splits", "probe_set_name", "shipped_probe_splits"]

#: Rows per split the probing reads by default (a few thousand texts: the probes and their embedding stay cheap).
DEFAULT_MAX_TRAIN = 4000
DEFAULT_MAX_TEST = 3000


@dataclass
class LabelledSplits:
    """One labelled set cut into the probe's train and test texts."""

    name: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    source: str


def _draw(texts: list[str], labels: list[str], rows: np.ndarray, cap: int | None) -> tuple[list[str], list[str]]:
    rows = rows[:cap] if cap is not None else rows
    kept = np.sort(rows)
    return [texts[i] for i in kept], [labels[i] for i in kept]


def probe_set_name(path: str | Path) -> str:
    """The name a labelled file's numbers carry (``sae/probe/<name>/…``): its stem, lower-case, other characters
    than letters, digits, ``_`` and ``-`` replaced by ``_``.

    >>> probe_set_name("data/My Intents$$.jsonl")
    'my_intents__'
    """
    return re.sub(r"[^a-z0-9_-]", "_", Path(path).name.split(".")[0].lower()) or "probe"


def labelled_file_splits(
    path: str | Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    max_train: int | None = DEFAULT_MAX_TRAIN,
    max_test: int | None = DEFAULT_MAX_TEST,
    seed: int = 0,
    name: str | None = None,
) -> LabelledSplits:
    """A labelled JSONL split half/half by a seeded permutation (module docstring).

    Raises:
        DataError: the file has no ``label_field`` (``file:1: field 'label'``), fewer than 4 rows, or one label
            only; or a bad line (a label on some lines only included).
    """
    probe = read_probe(path, text_field=text_field, label_field=label_field, id_field=None)
    if probe.labels is None:
        raise DataError(path, 1, label_field, "missing: k-sparse probing needs a label on every line")
    if len(probe) < 4 or len(set(probe.labels)) < 2:
        raise DataError(
            path,
            1,
            label_field,
            f"{len(probe)} rows with {len(set(probe.labels))} distinct labels; probing needs at least 4 rows and 2 "
            "labels",
        )
    order = np.random.default_rng(seed).permutation(len(probe))
    half = (len(order) + 1) // 2
    train = _draw(probe.texts, probe.labels, order[:half], max_train)
    test = _draw(probe.texts, probe.labels, order[half:], max_test)
    return LabelledSplits(name or probe_set_name(path), *train, *test, source=str(path))


def shipped_probe_splits(
    *, max_train: int | None = DEFAULT_MAX_TRAIN, max_test: int | None = DEFAULT_MAX_TEST, seed: int = 0
) -> list[LabelledSplits]:
    """The shipped Banking77 (its own train/test files) and AG News (half/half of its test file) splits."""
    rng = np.random.default_rng(seed)
    folder = bundled_dataset("banking77")
    train, test = read_probe(folder / "train.jsonl", id_field=None), read_probe(folder / "test.jsonl", id_field=None)
    assert train.labels is not None and test.labels is not None  # shipped files, labelled on every line
    banking = LabelledSplits(
        "banking77",
        *_draw(train.texts, train.labels, rng.permutation(len(train)), max_train),
        *_draw(test.texts, test.labels, rng.permutation(len(test)), max_test),
        source=str(folder),
    )
    agnews = labelled_file_splits(
        bundled_dataset("agnews") / "test.jsonl", max_train=max_train, max_test=max_test, seed=seed, name="agnews"
    )
    return [banking, agnews]
