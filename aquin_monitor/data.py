"""Read and validate user data: probe sets, query/document pairs, BEIR folders, triplets.

Every reader streams its file line by line (1-based line numbers; blank lines are skipped) and
either reads a line or raises :class:`DataError` naming the file, the line and the field that is
wrong. Nothing is dropped silently: what a reader reads but does not keep (BEIR queries outside
the split, score-0 judgements, documents past ``max_corpus``) is counted and shown by
``summary()``.

Only the standard library is imported at module level so that ``import aquin_monitor.data`` is
cheap; numpy is imported where an array is built.

>>> import json, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "probe.jsonl").write_text('{"text": "a cat", "label": "animal"}\\n\\n{"text": "a car"')
>>> try:
...     read_probe(folder / "probe.jsonl")
... except DataError as error:
...     print(error.line, error.field, error.problem)
3 None malformed JSON: Expecting ',' delimiter at column 17
"""

from __future__ import annotations

import gzip
import json
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # numpy only for annotations; it is imported lazily where used
    import numpy as np

__all__ = [
    "DataError",
    "ProbeSet",
    "RetrievalSet",
    "read_probe",
    "read_pairs",
    "DuplicateLinesWarning",
    "read_beir",
    "read_triplets",
    "corpus_file",
    "iter_corpus",
    "bundled_dataset",
    "scifact_probe",
    "BUNDLED_DATASETS",
]

_DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
BUNDLED_DATASETS = ("scifact", "banking77", "agnews", "snli_triplets")
_QRELS_HEADER = ["query-id", "corpus-id", "score"]


class DataError(ValueError):
    """Bad user data; ``str()`` is one line ``"<file>:<line>: field '<field>': <what is wrong>"``.

    ``line`` is None for problems of the whole file (empty file, missing companion file) and
    ``field`` is None for problems of the whole line (malformed JSON, not an object, bad encoding).

    >>> str(DataError("probe.jsonl", 7, "text", "empty text"))
    "probe.jsonl:7: field 'text': empty text"
    >>> str(DataError("probe.jsonl", None, None, "empty file: no records"))
    'probe.jsonl: empty file: no records'
    """

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = problem if field is None else f"field '{field}': {problem}"
        super().__init__(f"{where}: {what}")

    def __reduce__(self):  # keep the four-argument constructor picklable (multiprocessing)
        return (type(self), (self.path, self.line, self.field, self.problem))


# --------------------------------------------------------------------------------------------
# datasets


@dataclass
class ProbeSet:
    """Texts to embed at each snapshot, with optional labels and stable ids.

    ``ids`` are the file's ids when it has them, otherwise the 0-based row index as a string.
    ``truncated`` is True when ``limit`` stopped the reader before the end of the file.
    """

    texts: list[str]
    labels: list[str] | None
    ids: list[str]
    source: str
    truncated: bool = False

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.texts):
            raise ValueError(f"ProbeSet: {len(self.texts)} texts but {len(self.ids)} ids")
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise ValueError(f"ProbeSet: {len(self.texts)} texts but {len(self.labels)} labels")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ProbeSet: ids are not unique")

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_texts(cls, texts: Sequence[str], source: str = "<list>") -> ProbeSet:
        """An unlabelled probe of ``texts``, ids ``"0"``, ``"1"``, ...

        >>> ProbeSet.from_texts(["a", "b"]).ids
        ['0', '1']
        """
        texts = list(texts)
        return cls(texts=texts, labels=None, ids=[str(i) for i in range(len(texts))], source=source)

    @classmethod
    def from_retrieval(cls, retrieval: RetrievalSet) -> ProbeSet:
        """The queries (label ``"query"``, id ``"q:<id>"``) then the documents (``"document"``, ``"d:<id>"``)
        of a retrieval set, with its texts: a probe whose embeddings serve the retrieval metrics too."""
        return cls(
            texts=retrieval.query_texts() + retrieval.doc_texts(),
            labels=["query"] * len(retrieval.queries) + ["document"] * len(retrieval.corpus),
            ids=[f"q:{q}" for q in retrieval.query_ids()] + [f"d:{d}" for d in retrieval.doc_ids()],
            source=retrieval.source,
        )

    def label_names(self) -> list[str]:
        """Distinct labels in order of first appearance (empty when unlabelled)."""
        return list(dict.fromkeys(self.labels)) if self.labels is not None else []

    def summary(self) -> str:
        """One line of counts, e.g. ``"read 1,000 probe texts (77 labels) from X"``.

        >>> ProbeSet(["a", "b", "c"], ["x", "y", "x"], ["0", "1", "2"], "p.jsonl").summary()
        'read 3 probe texts (2 labels) from p.jsonl'
        """
        labels = "unlabelled" if self.labels is None else _count(len(self.label_names()), "label")
        text = f"read {_count(len(self), 'probe text')} ({labels}) from {self.source}"
        if self.truncated:
            text += f"; stopped at limit={len(self):,}, the rest of the file was not read"
        return text


@dataclass
class RetrievalSet:
    """Queries, a corpus and graded relevance judgements (qrels), as the retrieval signals need.

    ``qrels[qid]`` holds only relevant documents (grade > 0) and exists for every query (it is
    empty for a BEIR query whose judgements are all score 0). ``hard_negatives[qid]`` lists
    labelled hard-negative document ids and also exists for every query. ``not_kept`` counts
    what was read but is not in the set (shown by :meth:`summary`).
    """

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    categories: dict[str, str] | None
    hard_negatives: dict[str, list[str]]
    source: str
    not_kept: dict[str, int] = field(default_factory=dict)
    pair_categories: dict[str, dict[str, str]] | None = None

    def __post_init__(self) -> None:
        # Sets built by hand (tests, recipes) get the same guarantees as sets read from files.
        for qid in self.qrels:
            if qid not in self.queries:
                raise ValueError(f"RetrievalSet: qrels name unknown query id {qid!r}")
            for did, grade in self.qrels[qid].items():
                if did not in self.corpus:
                    raise ValueError(f"RetrievalSet: qrels of {qid!r} name unknown doc id {did!r}")
                if isinstance(grade, bool) or not isinstance(grade, int) or grade <= 0:
                    raise ValueError(f"RetrievalSet: grade of ({qid!r}, {did!r}) must be an int > 0")
        for qid, negatives in self.hard_negatives.items():
            if qid not in self.queries:
                raise ValueError(f"RetrievalSet: hard negatives name unknown query id {qid!r}")
            for did in negatives:
                if did not in self.corpus:
                    raise ValueError(f"RetrievalSet: hard negative {did!r} is not in the corpus")
        for qid in self.queries:
            self.qrels.setdefault(qid, {})
            self.hard_negatives.setdefault(qid, [])
        if self.categories is not None and set(self.categories) != set(self.queries):
            raise ValueError("RetrievalSet: categories must give one category per query")
        if self.pair_categories is not None:
            if self.categories is not None:
                raise ValueError(
                    "RetrievalSet: give categories (one per query) or pair_categories (one per pair), not both"
                )
            for qid, docs in self.qrels.items():
                if set(self.pair_categories.get(qid, {})) != set(docs):
                    raise ValueError(
                        f"RetrievalSet: pair_categories must give one category per relevant pair of {qid!r}"
                    )

    def category_rows(self) -> list[tuple[str, str, dict[str, int]]]:
        """``(query id, category, relevant documents)`` rows a per-category evaluation ranks, in query order.

        With one category per query (:attr:`categories`) each query is one row with all its relevant
        documents. With categories per pair (:attr:`pair_categories`) a query is one row per category
        of its pairs (sorted), holding only that category's relevant documents. Empty when the set
        has no categories.

        >>> rs = RetrievalSet({"q": "x"}, {"a": "A", "b": "B"}, {"q": {"a": 2, "b": 1}}, None, {}, "-",
        ...                   pair_categories={"q": {"a": "yes", "b": "no"}})
        >>> rs.category_rows()
        [('q', 'no', {'b': 1}), ('q', 'yes', {'a': 2})]
        """
        if self.categories is not None:
            return [(qid, self.categories[qid], dict(self.qrels[qid])) for qid in self.queries]
        rows: list[tuple[str, str, dict[str, int]]] = []
        for qid in self.queries if self.pair_categories is not None else ():
            labels = (self.pair_categories or {}).get(qid, {})
            for category in sorted(set(labels.values())):
                rows.append((qid, category, {d: g for d, g in self.qrels[qid].items() if labels[d] == category}))
        return rows

    def positional(self) -> tuple[list[dict[int, int]], list[list[int]], list[str] | None]:
        """Relevance, hard negatives and categories by position (queries in :meth:`query_ids` order,
        documents in :meth:`doc_ids` order), as :func:`aquin_monitor.signals.retrieval.retrieval_metrics` takes them.

        >>> rs = RetrievalSet({"q": "x"}, {"a": "A", "b": "B"}, {"q": {"b": 2}}, None, {"q": ["a"]}, "-")
        >>> rs.positional()
        ([{1: 2}], [[0]], None)
        """
        position = {doc_id: i for i, doc_id in enumerate(self.doc_ids())}
        qids = self.query_ids()
        relevant = [{position[d]: grade for d, grade in self.qrels[q].items()} for q in qids]
        negatives = [[position[d] for d in self.hard_negatives[q]] for q in qids]
        categories = [self.categories[q] for q in qids] if self.categories else None
        return relevant, negatives, categories

    def positional_category_rows(self) -> tuple[list[int], list[dict[int, int]], list[list[int]], list[str]] | None:
        """For categories given per pair: the rows of :meth:`category_rows` by position: each row's
        query position, relevant documents, hard negatives and category. None when categories are per
        query or absent (the overall ranking then serves the per-category figures too)."""
        if self.pair_categories is None:
            return None
        position = {doc_id: i for i, doc_id in enumerate(self.doc_ids())}
        query_position = {qid: i for i, qid in enumerate(self.query_ids())}
        table = self.category_rows()
        rows = [query_position[qid] for qid, _, _ in table]
        relevant = [{position[d]: grade for d, grade in docs.items()} for _, _, docs in table]
        negatives = [[position[d] for d in self.hard_negatives[qid]] for qid, _, _ in table]
        return rows, relevant, negatives, [category for _, category, _ in table]

    def query_ids(self) -> list[str]:
        """Query ids in stable (file) order."""
        return list(self.queries)

    def doc_ids(self) -> list[str]:
        """Document ids in stable (file) order."""
        return list(self.corpus)

    def query_texts(self) -> list[str]:
        """Query texts, aligned with :meth:`query_ids`."""
        return list(self.queries.values())

    def doc_texts(self) -> list[str]:
        """Document texts, aligned with :meth:`doc_ids`."""
        return list(self.corpus.values())

    def num_judgements(self) -> int:
        """Number of relevant (query, document) pairs."""
        return sum(len(docs) for docs in self.qrels.values())

    def relevance_matrix(self) -> np.ndarray:
        """Grades as an int32 array ``R[i, j]`` = grade of doc_ids()[j] for query_ids()[i] (0 = not relevant).

        >>> rs = RetrievalSet({"q": "x"}, {"a": "A", "b": "B"}, {"q": {"b": 2}}, None, {}, "-")
        >>> rs.relevance_matrix().tolist()
        [[0, 2]]
        """
        return self._id_matrix({qid: docs for qid, docs in self.qrels.items()})

    def hard_negative_matrix(self) -> np.ndarray:
        """Boolean ``N[i, j]``: doc_ids()[j] is a labelled hard negative of query_ids()[i]."""
        marks = {qid: {did: 1 for did in docs} for qid, docs in self.hard_negatives.items()}
        return self._id_matrix(marks).astype(bool)

    def _id_matrix(self, values: dict[str, dict[str, int]]) -> np.ndarray:
        import numpy as np

        column = {did: j for j, did in enumerate(self.corpus)}
        matrix = np.zeros((len(self.queries), len(self.corpus)), dtype=np.int32)
        for i, qid in enumerate(self.queries):
            for did, value in values.get(qid, {}).items():
                matrix[i, column[did]] = value
        return matrix

    def summary(self) -> str:
        """One line of counts of what was read, and of what was read but not kept.

        >>> RetrievalSet({"q": "x"}, {"a": "A"}, {"q": {"a": 1}}, None, {}, "p.jsonl").summary()
        'read 1 query, 1 document, 1 relevance judgement, 0 hard negatives from p.jsonl'
        """
        grades = {grade for docs in self.qrels.values() for grade in docs.values()}
        parts = [
            _count(len(self.queries), "query", "queries"),
            _count(len(self.corpus), "document"),
            _count(self.num_judgements(), "relevance judgement")
            + (f" (grades {min(grades)}-{max(grades)})" if grades and max(grades) > 1 else ""),
            _count(sum(len(v) for v in self.hard_negatives.values()), "hard negative"),
        ]
        if self.categories is not None:
            parts.append(_count(len(set(self.categories.values())), "category", "categories"))
        elif self.pair_categories is not None:
            mixed = sum(1 for labels in self.pair_categories.values() if len(set(labels.values())) > 1)
            names = {c for labels in self.pair_categories.values() for c in labels.values()}
            parts.append(
                _count(len(names), "category", "categories")
                + f" given per pair ({_count(mixed, 'query', 'queries')} in several)"
            )
        unjudged = sum(1 for docs in self.qrels.values() if not docs)
        if unjudged:
            parts.append(_count(unjudged, "query", "queries") + " without a relevant document")
        text = f"read {', '.join(parts)} from {self.source}"
        dropped = [f"{n:,} {what}" for what, n in self.not_kept.items() if n]
        if dropped:
            text += "; read but not kept: " + ", ".join(dropped)
        return text


# --------------------------------------------------------------------------------------------
# readers


def read_probe(
    path: str | Path,
    *,
    text_field: str = "text",
    label_field: str | None = "label",
    id_field: str | None = "id",
    limit: int | None = None,
) -> ProbeSet:
    """Read a probe set: JSONL with a text field and, on every line or on none, a label and an id.

    Labels and ids may be strings or integers (kept as strings). ``label_field=None`` or
    ``id_field=None`` ignores that field. ``limit`` reads only the first ``limit`` records and
    marks the set ``truncated`` when the file has more.

    Args:
        path: A JSONL file, one object a line (blank lines are skipped).
        text_field: Name of the field holding the text to embed.
        label_field: Name of the optional label field, or None to ignore labels.
        id_field: Name of the optional id field, or None to ignore ids (then ids are ``"0"``, ``"1"``, ...).
        limit: Read at most this many records, or all when None (else a positive integer).

    Inputs:
        +------------------------------------------------+--------------------------------------+
        | line                                           | kept as                              |
        +================================================+======================================+
        | ``{"text": str}``                              | text; no label; id = position        |
        +------------------------------------------------+--------------------------------------+
        | ``{"text": str, "label": str or int}``         | text and label (as a string)         |
        +------------------------------------------------+--------------------------------------+
        | ``{"text":.., "label":.., "id": str or int}``  | text, label, unique id (as a string) |
        +------------------------------------------------+--------------------------------------+

    Returns:
        A :class:`ProbeSet` of texts, labels (None when the file has none) and ids.

    Raises:
        DataError: malformed JSON, a missing or empty text, a label or id on some lines only, a
            duplicate id, an empty file; one line naming the file, line and field.

    Example:
        ::

            >>> import tempfile, pathlib
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "probe.jsonl"
            >>> _ = path.write_text('{"text": "a cat", "label": "animal"}\\n{"text": "a car", "label": 7}\\n')
            >>> probe = read_probe(path); probe.texts, probe.labels, probe.ids
            (['a cat', 'a car'], ['animal', '7'], ['0', '1'])
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    texts: list[str] = []
    labels: list[str] = []
    ids: list[str] = []
    id_lines: dict[str, int] = {}
    # line of the first record, and whether it had a label / an id: later lines must agree
    first: tuple[int, bool, bool] | None = None
    truncated = False
    for lineno, record in _records(path):
        if limit is not None and len(texts) == limit:
            truncated = True
            break
        texts.append(_text(record, text_field, path, lineno))
        has_label = label_field is not None and label_field in record
        has_id = id_field is not None and id_field in record
        if first is None:
            first = (lineno, has_label, has_id)
        _check_as_on_first_line(
            path, lineno, first[0], ((label_field, has_label, first[1]), (id_field, has_id, first[2]))
        )
        if has_label and label_field is not None:  # has_label implies it: the check tells mypy
            labels.append(_identifier(record, label_field, path, lineno))
        if has_id and id_field is not None:
            ids.append(_claim_id(_identifier(record, id_field, path, lineno), id_lines, path, lineno, id_field))
    if first is None:
        raise _empty(path)
    return ProbeSet(
        texts=texts,
        labels=labels if first[1] else None,
        ids=ids if first[2] else [str(i) for i in range(len(texts))],
        source=str(path),
        truncated=truncated,
    )


def read_pairs(path: str | Path) -> RetrievalSet:
    """Read a retrieval set from JSONL query/document pairs.

    Each line is ``{"query": str, "document": str}`` with optional ``"relevance"`` (integer grade
    >= 1, default 1), ``"category"``, ``"negative"`` (a hard-negative document text, or a list of
    them), ``"query_id"`` and ``"document_id"``. Identical query texts are one query and identical
    document texts are one document (hard negatives included). Ids not given in the file are
    derived in order of first appearance: ``q0, q1, ...`` and ``d0, d1, ...`` (skipping any id the
    file uses itself).

    Rules for files labelled per pair (SICK-style):

    - a line identical to an earlier one (the same JSON object, whatever its spacing or key
      order) is counted once; a :class:`DuplicateLinesWarning` names the line numbers and
      :meth:`RetrievalSet.summary` counts them;
    - the same query and document on two lines that differ (another grade, another category,
      ...) is an error naming the line and the field that disagrees;
    - ``category`` belongs to the pair. When every query's pairs carry one category it is the
      query's category (:attr:`RetrievalSet.categories`). When a query's pairs carry several,
      :attr:`RetrievalSet.categories` is None and :attr:`RetrievalSet.pair_categories` holds each
      pair's: the query is then evaluated once in the overall figures (against all its relevant
      documents) and once in each of its categories, against that category's relevant documents
      only (:meth:`RetrievalSet.category_rows`).

    >>> import json, tempfile, pathlib, warnings
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sick.jsonl"
    >>> rows = [{"query": "a man plays", "document": "a man plays a guitar", "category": "ENTAILMENT"},
    ...         {"query": "a man plays", "document": "nobody plays", "category": "CONTRADICTION"},
    ...         {"query": "a man plays", "document": "a man plays a guitar", "category": "ENTAILMENT"}]
    >>> _ = path.write_text("\\n".join(json.dumps(r) for r in rows))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     rs = read_pairs(path)
    >>> "line 3 (same as line 1)" in str(caught[0].message), rs.categories
    (True, None)
    >>> rs.category_rows()
    [('q0', 'CONTRADICTION', {'d1': 1}), ('q0', 'ENTAILMENT', {'d0': 1})]
    """
    reader = _PairsReader(path)
    for lineno, record in _records(path):
        reader.add(lineno, record)
    return reader.result()


class DuplicateLinesWarning(UserWarning):
    """A pairs file repeats identical lines; each is counted once."""


class _PairsReader:
    """The state of :func:`read_pairs` while it reads one file, line by line."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.queries = _TextIds(path, "query_id")
        self.documents = _TextIds(path, "document_id")
        self.pair_lines: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.grades: dict[str, dict[str, int]] = {}
        self.negatives: dict[str, dict[str, int]] = {}  # query text -> {negative text: line}
        self.categories: dict[tuple[str, str], tuple[str, int]] = {}  # (query, document) -> (category, line)
        self.query_lines: dict[str, int] = {}  # query text -> first line, for missing categories
        self.repeated: list[tuple[int, int]] = []  # (line, the earlier identical line)

    def add(self, lineno: int, record: dict[str, Any]) -> None:
        path = self.path
        query = _text(record, "query", path, lineno)
        document = _text(record, "document", path, lineno)
        earlier = self.pair_lines.get((query, document))
        if earlier is not None:
            if record == earlier[1]:
                self.repeated.append((lineno, earlier[0]))
                return
            raise _conflicting_pair(path, lineno, record, earlier)
        self.query_lines.setdefault(query, lineno)
        self.queries.add(query, _optional_identifier(record, "query_id", path, lineno), lineno)
        self.documents.add(document, _optional_identifier(record, "document_id", path, lineno), lineno)
        if document in self.negatives.get(query, {}):
            raise DataError(
                path,
                lineno,
                "document",
                f"also a hard negative of this query on line {self.negatives[query][document]}",
            )
        self.pair_lines[(query, document)] = (lineno, record)
        self.grades.setdefault(query, {})[document] = _grade(record, path, lineno)
        if "category" in record:
            self.categories[(query, document)] = (_text(record, "category", path, lineno), lineno)
        for i, negative in enumerate(_negatives(record, path, lineno)):
            if (query, negative) in self.pair_lines:
                raise DataError(
                    path,
                    lineno,
                    f"negative[{i}]" if isinstance(record["negative"], list) else "negative",
                    f"also a relevant document of this query on line {self.pair_lines[(query, negative)][0]}",
                )
            self.negatives.setdefault(query, {}).setdefault(negative, lineno)
            self.documents.add(negative, None, lineno)

    def result(self) -> RetrievalSet:
        path = self.path
        if not self.pair_lines:
            raise _empty(path)
        if self.categories and len(self.categories) != len(self.pair_lines):
            line = min(line for pair, (line, _) in self.pair_lines.items() if pair not in self.categories)
            raise DataError(
                path, line, "category", "missing here while other lines have one; give every line a category or none"
            )
        if self.repeated:
            shown = ", ".join(f"line {line} (same as line {first})" for line, first in self.repeated[:10])
            more = f" and {len(self.repeated) - 10} more" if len(self.repeated) > 10 else ""
            warnings.warn(
                f"{path}: {_count(len(self.repeated), 'repeated line')} counted once: {shown}{more}",
                DuplicateLinesWarning,
                stacklevel=3,
            )
        qid = self.queries.assign("q")
        did = self.documents.assign("d")
        per_query: dict[str, set[str]] = {}
        for (query, _), (category, _) in self.categories.items():
            per_query.setdefault(query, set()).add(category)
        single = all(len(values) == 1 for values in per_query.values())
        return RetrievalSet(
            queries={qid[q]: q for q in self.query_lines},
            corpus={did[d]: d for d in self.documents.order},
            qrels={qid[q]: {did[d]: g for d, g in docs.items()} for q, docs in self.grades.items()},
            categories={qid[q]: next(iter(per_query[q])) for q in self.query_lines} if per_query and single else None,
            hard_negatives={qid[q]: [did[d] for d in self.negatives.get(q, {})] for q in self.query_lines},
            source=str(path),
            not_kept={"repeated lines": len(self.repeated)} if self.repeated else {},
            pair_categories=(
                {
                    qid[q]: {did[d]: c for (q2, d), (c, _) in self.categories.items() if q2 == q}
                    for q in self.query_lines
                }
                if per_query and not single
                else None
            ),
        )


def _conflicting_pair(
    path: str | Path, lineno: int, record: dict[str, Any], earlier: tuple[int, dict[str, Any]]
) -> DataError:
    """The error for a query/document pair given again with different fields (the first that differs)."""
    first_line, first = earlier
    names = ["relevance", "category"] + sorted((set(record) | set(first)) - {"relevance", "category"})
    for name in names:
        if record.get(name) != first.get(name):
            if name == "relevance":
                problem = (
                    f"conflicting relevance for the same query and document: {record.get(name, 1)!r} here, "
                    f"{first.get(name, 1)!r} on line {first_line}"
                )
            else:
                problem = (
                    f"the same query and document as line {first_line} with a different {name!r}: "
                    f"{record.get(name)!r} here, {first.get(name)!r} there"
                )
            return DataError(path, lineno, name, problem)
    return DataError(path, lineno, "document", f"duplicate pair: same query and document as line {first_line}")


def read_triplets(path: str | Path) -> list[tuple[str, str, str]]:
    """Read ``{"anchor", "positive", "negative"}`` JSONL (all three non-empty strings) as tuples."""
    triplets = [
        (_text(r, "anchor", path, n), _text(r, "positive", path, n), _text(r, "negative", path, n))
        for n, r in _records(path)
    ]
    if not triplets:
        raise _empty(path)
    return triplets


def read_beir(folder: str | Path, split: str = "test", *, max_corpus: int | None = None) -> RetrievalSet:
    """Read a BEIR folder: ``corpus.jsonl[.gz]``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

    A document's text is ``title + " " + text`` (just ``text`` when the title is empty), as BEIR
    and sentence-transformers embed it. Only queries judged in the split are kept; score-0
    judgements are validated but are not relevant. With ``max_corpus`` the corpus keeps every
    document judged in the split plus the first other documents in file order, ``max_corpus`` in
    all; every corpus line is still read and validated.

    Args:
        folder: A BEIR dataset folder (Thakur et al. 2021, "BEIR: A Heterogeneous Benchmark for
            Zero-shot Evaluation of Information Retrieval Models").
        split: Name of the qrels file to read, ``qrels/<split>.tsv``.
        max_corpus: Keep at most this many documents (the judged ones always), or all when None.

    Returns:
        A :class:`RetrievalSet` whose ``not_kept`` counts the queries outside the split, the
        score-0 judgements and the documents beyond ``max_corpus``.

    Raises:
        FileNotFoundError: The folder or one of its three files is missing.
        DataError: A line is malformed, an id is duplicated, or a judgement names an unknown id.
        ValueError: ``max_corpus`` is not a positive integer or is smaller than the judged documents.

    Example:
        ::

            >>> beir = read_beir(bundled_dataset("scifact"), "test", max_corpus=500)
            >>> len(beir.queries), len(beir.corpus), beir.not_kept["documents beyond max_corpus"]
            (300, 500, 4683)
    """
    folder = Path(folder)
    corpus_path, queries_path, qrels_path = _beir_paths(folder, split)
    judgements = _read_qrels(qrels_path)  # (qid, did) -> (score, line)
    judged_queries = {qid for qid, _ in judgements}
    judged_docs = {did for _, did in judgements}
    _check_max_corpus(max_corpus, len(judged_docs), split)
    queries, query_lines = _read_beir_queries(queries_path, judged_queries)
    others_left = None if max_corpus is None else max_corpus - len(judged_docs)
    corpus, doc_lines = _read_beir_corpus(corpus_path, judged_docs, others_left)
    for (qid, did), (_, line) in judgements.items():
        if qid not in query_lines:
            raise DataError(qrels_path, line, "query-id", f"unknown query id '{qid}': not in {queries_path.name}")
        if did not in doc_lines:
            raise DataError(qrels_path, line, "corpus-id", f"unknown document id '{did}': not in {corpus_path.name}")

    qrels: dict[str, dict[str, int]] = {qid: {} for qid in queries}
    for (qid, did), (score, _) in judgements.items():
        if score > 0:
            qrels[qid][did] = score
    if judgements and not any(qrels.values()):
        raise DataError(
            qrels_path,
            None,
            None,
            f"all {len(judgements)} judgements of split '{split}' have score 0: "
            "no document is relevant, so retrieval metrics are undefined",
        )
    not_kept = {
        f"queries outside split '{split}'": len(query_lines) - len(queries),
        "score-0 judgements": sum(1 for score, _ in judgements.values() if score == 0),
        "documents beyond max_corpus": len(doc_lines) - len(corpus),
    }
    return RetrievalSet(
        queries=queries,
        corpus=corpus,
        qrels=qrels,
        categories=None,
        hard_negatives={qid: [] for qid in queries},
        source=f"{folder} (split '{split}')",
        not_kept=not_kept,
    )


def corpus_file(path: str | os.PathLike) -> Path:
    """The file a corpus is read from: ``path`` itself, or a BEIR folder's ``corpus.jsonl[.gz]``.

    Raises FileNotFoundError (or :class:`DataError` for a folder with both files) naming what is missing.
    """
    path = Path(path)
    if path.is_dir():
        return _corpus_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus not found: {path}")
    return path


def iter_corpus(path: str | os.PathLike, *, check_ids: bool = True) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` from a corpus file, one line at a time, validating every line.

    Two formats, told apart by the first record: a BEIR corpus (``{"_id", "text", "title"?}``: the
    text is ``"title text"`` as :func:`read_beir` builds it) or a probe JSONL (``{"text", "id"?}``:
    without ``id`` the ids are the positions ``"0"``, ``"1"``, ...). ``path`` may be a BEIR folder.
    With ``check_ids`` every id is remembered to refuse a duplicate (memory of one dict of the ids).

    Raises:
        DataError: as the other readers (malformed line, missing or empty text, duplicate id, empty file).

    Example:
        ::

            >>> import tempfile, pathlib
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
            >>> _ = path.write_text('{"_id": "d1", "title": "Cats", "text": "sit"}\\n{"_id": 7, "text": "dogs"}\\n')
            >>> list(iter_corpus(path))
            [('d1', 'Cats sit'), ('7', 'dogs')]
    """
    path = corpus_file(path)
    beir: bool | None = None
    first_line = 0
    has_id = False
    seen: dict[str, int] = {}
    position = 0
    for lineno, record in _records(path):
        if beir is None:
            beir, first_line, has_id = "_id" in record, lineno, "id" in record
        if beir:
            ident = _identifier(record, "_id", path, lineno)
            text = _text(record, "text", path, lineno)
            title = record.get("title", "")
            if not isinstance(title, str):
                raise DataError(path, lineno, "title", f"expected a string, got {_json_type(title)}")
            text = f"{title} {text}" if title else text
        else:
            text = _text(record, "text", path, lineno)
            _check_as_on_first_line(path, lineno, first_line, (("id", "id" in record, has_id),))
            ident = _identifier(record, "id", path, lineno) if has_id else str(position)
        if check_ids:
            _claim_id(ident, seen, path, lineno, "_id" if beir else "id")
        position += 1
        yield ident, text
    if beir is None:
        raise _empty(path)


def bundled_dataset(name: str) -> Path:
    """Folder of a dataset shipped with the package: ``scifact``, ``banking77``, ``agnews``, ``snli_triplets``.

    >>> bundled_dataset("scifact").name
    'scifact'
    """
    if name not in BUNDLED_DATASETS:
        raise ValueError(f"unknown bundled dataset {name!r}; choose one of {', '.join(BUNDLED_DATASETS)}")
    return _DATASETS_DIR / name


def scifact_probe(n_docs: int = 1000, split: str = "test", seed: int = 0) -> tuple[ProbeSet, RetrievalSet]:
    """The bundled SciFact split as a probe set and a matching retrieval set.

    The documents are every document relevant to a query of the split plus others drawn
    uniformly without replacement (``numpy.random.default_rng(seed)``) up to ``n_docs``, kept in
    corpus order; the same arguments give the same set. The probe holds the split's queries
    (label ``"query"``, id ``"q:<query id>"``) then the documents (label ``"document"``, id
    ``"d:<doc id>"``), with the same texts as the retrieval set.
    """
    import numpy as np

    full = read_beir(bundled_dataset("scifact"), split)
    relevant = {did for docs in full.qrels.values() for did in docs}
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or not len(relevant) <= n_docs <= len(full.corpus):
        raise ValueError(
            f"n_docs must be an integer from {len(relevant):,} (the relevant documents of split '{split}') "
            f"to {len(full.corpus):,}, got {n_docs!r}"
        )
    others = [did for did in full.corpus if did not in relevant]
    drawn = np.random.default_rng(seed).choice(len(others), size=n_docs - len(relevant), replace=False)
    keep = relevant | {others[i] for i in drawn.tolist()}
    corpus = {did: text for did, text in full.corpus.items() if did in keep}
    source = f"{full.source}, {len(corpus):,} of {len(full.corpus):,} documents (seed {seed})"
    retrieval = RetrievalSet(
        queries=full.queries,
        corpus=corpus,
        qrels=full.qrels,
        categories=None,
        hard_negatives={qid: [] for qid in full.queries},
        source=source,
        not_kept={**full.not_kept, "documents not drawn": len(full.corpus) - len(corpus)},
    )
    return ProbeSet.from_retrieval(retrieval), retrieval


# --------------------------------------------------------------------------------------------
# line and field validation


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for each non-blank line, decoding UTF-8 line by line.

    ``*.gz`` files are decompressed on the fly; a corrupt stream is reported at the line where
    decompression failed.
    """
    compressed = Path(path).suffix == ".gz"
    with (gzip.open if compressed else open)(path, "rb") as handle:
        lines = iter(handle)
        lineno = 0
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as exc:
                if not compressed:
                    raise
                raise DataError(path, lineno + 1, None, f"corrupt gzip file ({exc})") from exc
            lineno += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    path,
                    lineno,
                    None,
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8",
                ) from None
            if lineno == 1 and text.startswith("\ufeff"):  # byte-order mark some editors write
                text = text[1:]
            if text.strip():
                yield lineno, text


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two equal keys: a silent loss we refuse.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank JSONL line; anything else is a DataError."""
    for lineno, text in _lines(path):
        try:
            value = json.loads(text, object_pairs_hook=_object_without_duplicate_keys)
        except _DuplicateKey as exc:
            raise DataError(path, lineno, exc.key, "appears twice in the same object") from None
        except json.JSONDecodeError as exc:
            raise DataError(path, lineno, None, f"malformed JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(value, dict):
            raise DataError(path, lineno, None, f"expected a JSON object {{...}}, got {_json_type(value)}")
        yield lineno, value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _missing(record: dict[str, Any], name: str, path: str | Path, lineno: int) -> DataError:
    present = ", ".join(record) or "none"
    return DataError(path, lineno, name, f"missing (fields on this line: {present})")


def _text(record: dict[str, Any], name: str, path: str | Path, lineno: int) -> str:
    """A required non-empty string field."""
    if name not in record:
        raise _missing(record, name, path, lineno)
    value = record[name]
    if not isinstance(value, str):
        raise DataError(path, lineno, name, f"expected a string, got {_json_type(value)}")
    if not value.strip():
        raise DataError(path, lineno, name, "empty text" if not value else "whitespace-only text")
    problem = unencodable_text(value)
    if problem:
        raise DataError(path, lineno, name, problem)
    return value


def unencodable_text(text: str) -> str | None:
    """Why ``text`` cannot be tokenised (a NUL, or a lone surrogate such as ``\\ud800`` that has no
    UTF-8 form: a JSON escape, or a command-line byte that is not UTF-8), or None when it can.

    >>> unencodable_text("a cat"), unencodable_text("a\\x00cat")
    (None, 'NUL character at position 1')
    >>> unencodable_text("caf\\udce9")
    "not valid Unicode: lone surrogate '\\\\udce9' at position 3 (bytes that are not UTF-8?)"
    """
    if "\x00" in text:
        return f"NUL character at position {text.index(chr(0))}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return (
            f"not valid Unicode: lone surrogate {text[error.start]!r} at position {error.start} "
            "(bytes that are not UTF-8?)"
        )
    return None


def _identifier(record: dict[str, Any], name: str, path: str | Path, lineno: int) -> str:
    """A required id or label: a non-empty string or an integer, returned as a string."""
    if name not in record:
        raise _missing(record, name, path, lineno)
    value = record[name]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(path, lineno, name, f"expected a string or an integer, got {_json_type(value)}")
    if not value.strip():
        raise DataError(path, lineno, name, "empty")
    return value


def _optional_identifier(record: dict[str, Any], name: str, path: str | Path, lineno: int) -> str | None:
    return _identifier(record, name, path, lineno) if name in record else None


def _grade(record: dict[str, Any], path: str | Path, lineno: int) -> int:
    if "relevance" not in record:
        return 1
    value = record["relevance"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, lineno, "relevance", f"expected an integer grade >= 1, got {_json_type(value)}")
    if value < 1:
        raise DataError(
            path,
            lineno,
            "relevance",
            f"bad grade {value}: a relevant pair has grade >= 1 (put non-relevant documents in 'negative')",
        )
    return value


def _negatives(record: dict[str, Any], path: str | Path, lineno: int) -> list[str]:
    if "negative" not in record:
        return []
    value = record["negative"]
    if isinstance(value, str):
        return [_text(record, "negative", path, lineno)]
    if not isinstance(value, list):
        raise DataError(path, lineno, "negative", f"expected a string or a list of strings, got {_json_type(value)}")
    return [_text({f"negative[{i}]": item}, f"negative[{i}]", path, lineno) for i, item in enumerate(value)]


def _check_as_on_first_line(
    path: str | Path, lineno: int, first_line: int, fields: tuple[tuple[str | None, bool, bool], ...]
) -> None:
    """Each (field, given here, given on the first line): a field is given on every line or on none."""
    for name, has, had in fields:
        if has != had:
            raise DataError(
                path,
                lineno,
                name,
                f"{'present' if has else 'missing'} here but "
                f"{'present' if had else 'missing'} on line {first_line}; "
                "give it on every line or on none",
            )


def _claim_id(ident: str, lines: dict[str, int], path: str | Path, lineno: int, field: str) -> str:
    """Record ``ident`` as used on ``lineno`` and return it; DataError if an earlier line used it."""
    if ident in lines:
        raise DataError(path, lineno, field, f"duplicate id '{ident}' (first on line {lines[ident]})")
    lines[ident] = lineno
    return ident


class _TextIds:
    """Identity by text, with optional ids from the file that must agree with it."""

    def __init__(self, path: str | Path, id_field: str):
        self.path, self.id_field = path, id_field
        self.order: dict[str, None] = {}  # texts in order of first appearance
        self.given: dict[str, tuple[str, int]] = {}  # text -> (id, line)
        self.owner: dict[str, tuple[str, int]] = {}  # id -> (text, line)

    def add(self, text: str, ident: str | None, lineno: int) -> None:
        self.order.setdefault(text, None)
        if ident is None:
            return
        owner = self.owner.get(ident)
        if owner is not None and owner[0] != text:
            raise DataError(
                self.path,
                lineno,
                self.id_field,
                f"duplicate id '{ident}': line {owner[1]} uses it for a different text",
            )
        given = self.given.get(text)
        if given is not None and given[0] != ident:
            raise DataError(
                self.path,
                lineno,
                self.id_field,
                f"'{ident}' differs from id '{given[0]}' given to the same text on line {given[1]}",
            )
        self.owner.setdefault(ident, (text, lineno))
        self.given.setdefault(text, (ident, lineno))

    def assign(self, prefix: str) -> dict[str, str]:
        """Text -> id: the file's id, else ``<prefix><n>`` counting up and skipping ids in use."""
        ids: dict[str, str] = {}
        counter = 0
        for text in self.order:
            if text in self.given:
                ids[text] = self.given[text][0]
                continue
            while f"{prefix}{counter}" in self.owner:
                counter += 1
            ids[text] = f"{prefix}{counter}"
            counter += 1
        return ids


def _beir_paths(folder: Path, split: str) -> tuple[Path, Path, Path]:
    """The corpus, queries and qrels files of a BEIR folder; FileNotFoundError names a missing one."""
    if not folder.is_dir():
        raise FileNotFoundError(f"BEIR folder not found: {folder}")
    corpus_path = _corpus_path(folder)
    queries_path = folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not queries_path.is_file():
        raise FileNotFoundError(f"{queries_path} not found (a BEIR folder has queries.jsonl)")
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise FileNotFoundError(f"{qrels_path} not found; splits in this folder: {', '.join(splits) or 'none'}")
    return corpus_path, queries_path, qrels_path


def _check_max_corpus(max_corpus: int | None, judged_docs: int, split: str) -> None:
    if max_corpus is None:
        return
    if isinstance(max_corpus, bool) or not isinstance(max_corpus, int) or max_corpus < 1:
        raise ValueError(f"max_corpus must be a positive integer or None, got {max_corpus!r}")
    if max_corpus < judged_docs:
        raise ValueError(
            f"max_corpus={max_corpus:,} is smaller than the {judged_docs:,} documents judged in split '{split}'"
        )


def _read_beir_queries(path: Path, judged: set[str]) -> tuple[dict[str, str], dict[str, int]]:
    """Every query line validated; returns the judged queries' texts and the line of every id."""
    queries: dict[str, str] = {}
    query_lines: dict[str, int] = {}
    for lineno, record in _records(path):
        qid = _identifier(record, "_id", path, lineno)
        text = _text(record, "text", path, lineno)
        _claim_id(qid, query_lines, path, lineno, "_id")
        if qid in judged:
            queries[qid] = text
    if not query_lines:
        raise _empty(path)
    return queries, query_lines


def _read_beir_corpus(path: Path, judged: set[str], others_left: int | None) -> tuple[dict[str, str], dict[str, int]]:
    """Every corpus line validated; keeps the judged documents and the first ``others_left`` others
    (all when None); returns the kept texts and the line of every id."""
    corpus: dict[str, str] = {}
    doc_lines: dict[str, int] = {}
    for lineno, record in _records(path):
        did = _identifier(record, "_id", path, lineno)
        text = _text(record, "text", path, lineno)
        title = record.get("title", "")
        if not isinstance(title, str):
            raise DataError(path, lineno, "title", f"expected a string, got {_json_type(title)}")
        _claim_id(did, doc_lines, path, lineno, "_id")
        if did in judged or others_left is None or others_left > 0:
            corpus[did] = f"{title} {text}" if title else text
            if did not in judged and others_left is not None:
                others_left -= 1
    if not doc_lines:
        raise _empty(path)
    return corpus, doc_lines


def _corpus_path(folder: Path) -> Path:
    plain, packed = folder / "corpus.jsonl", folder / "corpus.jsonl.gz"
    if plain.is_file() and packed.is_file():
        raise DataError(folder, None, None, "has both corpus.jsonl and corpus.jsonl.gz; keep one")
    if plain.is_file() or packed.is_file():
        return plain if plain.is_file() else packed
    raise FileNotFoundError(f"{folder} has no corpus.jsonl or corpus.jsonl.gz")


def _read_qrels(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """``(query id, doc id) -> (score, line)`` from a BEIR qrels TSV (header optional)."""
    judgements: dict[tuple[str, str], tuple[int, int]] = {}
    first = True
    for lineno, text in _lines(path):
        columns = [c.strip() for c in text.rstrip("\r\n").split("\t")]
        if first and columns == _QRELS_HEADER:
            first = False
            continue
        first = False
        if len(columns) != 3:
            raise DataError(
                path, lineno, None, f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(columns)}"
            )
        qid, did, score_text = columns
        for name, value in (("query-id", qid), ("corpus-id", did)):
            if not value:
                raise DataError(path, lineno, name, "empty")
        # int() alone would also take '1_000' and non-ASCII digits
        if not re.fullmatch(r"[0-9]+", score_text):
            raise DataError(path, lineno, "score", f"bad score '{score_text}': expected an integer >= 0")
        score = int(score_text)
        if (qid, did) in judgements:
            raise DataError(
                path,
                lineno,
                "corpus-id",
                f"duplicate judgement of ('{qid}', '{did}') (first on line {judgements[(qid, did)][1]})",
            )
        judgements[(qid, did)] = (score, lineno)
    if not judgements:
        raise _empty(path)
    return judgements


def _empty(path: str | Path) -> DataError:
    return DataError(path, None, None, "empty file: no records")


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else (plural or singular + 's')}"
