"""A tiny retrieval set (6 queries, 12 documents, query i relevant to document i) and the probe of all its texts,
for tests that take snapshots."""

from __future__ import annotations

from aquin_monitor.data import ProbeSet, RetrievalSet

QUERIES = {f"q{i}": f"what is topic number {i} about" for i in range(6)}
DOCS = {f"d{i}": f"topic number {i} is about the thing {i}" for i in range(12)}
QRELS = {f"q{i}": {f"d{i}": 1} for i in range(6)}


def probe_and_retrieval() -> tuple[ProbeSet, RetrievalSet]:
    """The probe (queries then documents, labelled by kind) and the retrieval set."""
    retrieval = RetrievalSet(QUERIES, DOCS, QRELS, None, {q: [] for q in QUERIES}, "test")
    texts = list(QUERIES.values()) + list(DOCS.values())
    probe = ProbeSet(texts, ["query"] * 6 + ["document"] * 12, [str(i) for i in range(18)], "test")
    return probe, retrieval
