"""Tests of aquin_monitor.data: every reader's happy path and every kind of bad input.

Each error test checks that the DataError names the file, the line and the field, both as
attributes and in the one-line message a user sees.
"""

from __future__ import annotations

import csv
import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from aquin_monitor.data import (
    BUNDLED_DATASETS,
    DataError,
    ProbeSet,
    RetrievalSet,
    bundled_dataset,
    read_beir,
    read_pairs,
    read_probe,
    read_triplets,
    scifact_probe,
)

# ------------------------------------------------------------------------------------------
# helpers


def write_lines(path: Path, lines: list, *, compress: bool = False) -> Path:
    """Write one line per item: dicts as JSON, strings as they are."""
    text = "".join((json.dumps(item) if isinstance(item, dict) else item) + "\n" for item in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def expect_error(call, path: Path, line: int | None, field: str | None, *words: str) -> DataError:
    """Run ``call`` and check the DataError it raises names ``path``, ``line`` and ``field``."""
    with pytest.raises(DataError) as caught:
        call()
    error = caught.value
    message = str(error)
    assert (error.path, error.line, error.field) == (str(path), line, field), message
    assert "\n" not in message
    where = str(path) if line is None else f"{path}:{line}: "
    assert message.startswith(where), message
    if field is not None:
        assert f"field '{field}'" in message, message
    for word in words:
        assert word in message, message
    return error


# ------------------------------------------------------------------------------------------
# DataError


def test_data_error_message_is_one_line_with_file_line_field():
    error = DataError("x.jsonl", 4, "text", "empty text")
    assert str(error) == "x.jsonl:4: field 'text': empty text"
    assert isinstance(error, ValueError)
    assert str(DataError("x.jsonl", 4, None, "malformed JSON")) == "x.jsonl:4: malformed JSON"
    assert str(DataError("x.jsonl", None, None, "empty file")) == "x.jsonl: empty file"


def test_data_error_survives_pickling():
    error = pickle.loads(pickle.dumps(DataError("x.jsonl", 4, "text", "empty text")))
    assert (error.path, error.line, error.field, str(error)) == (
        "x.jsonl",
        4,
        "text",
        "x.jsonl:4: field 'text': empty text",
    )


# ------------------------------------------------------------------------------------------
# probe sets


def test_read_probe_texts_labels_ids_and_blank_lines(tmp_path):
    path = write_lines(
        tmp_path / "probe.jsonl",
        [
            {"text": "a cat", "label": "animal", "id": "p1"},
            "",
            "   ",
            {"text": "a car", "label": "vehicle", "id": 7, "extra": [1, 2]},
            {"text": "a dog", "label": "animal", "id": "p3"},
        ],
    )
    probe = read_probe(path)
    assert probe.texts == ["a cat", "a car", "a dog"]
    assert probe.labels == ["animal", "vehicle", "animal"]
    assert probe.ids == ["p1", "7", "p3"]
    assert probe.label_names() == ["animal", "vehicle"]
    assert len(probe) == 3 and not probe.truncated
    assert probe.summary() == f"read 3 probe texts (2 labels) from {path}"


def test_read_probe_without_labels_or_ids_numbers_rows(tmp_path):
    path = write_lines(tmp_path / "probe.jsonl", [{"text": "one"}, "", {"text": "two"}])
    probe = read_probe(path)
    assert probe.labels is None
    assert probe.ids == ["0", "1"]
    assert probe.summary() == f"read 2 probe texts (unlabelled) from {path}"


def test_read_probe_custom_fields_integer_labels_and_gzip(tmp_path):
    path = write_lines(
        tmp_path / "probe.jsonl.gz",
        [
            {"sentence": "first", "topic": 3, "key": "a"},
            {"sentence": "second", "topic": 1, "key": "b"},
        ],
        compress=True,
    )
    probe = read_probe(path, text_field="sentence", label_field="topic", id_field="key")
    assert (probe.texts, probe.labels, probe.ids) == (["first", "second"], ["3", "1"], ["a", "b"])


def test_read_probe_ignores_label_and_id_fields_set_to_none(tmp_path):
    path = write_lines(tmp_path / "probe.jsonl", [{"text": "x", "label": "l", "id": "i"}, {"text": "y"}])
    probe = read_probe(path, label_field=None, id_field=None)
    assert (probe.labels, probe.ids) == (None, ["0", "1"])


def test_read_probe_limit_marks_truncation_only_when_lines_remain(tmp_path):
    path = write_lines(tmp_path / "probe.jsonl", [{"text": f"t{i}"} for i in range(5)] + [""])
    probe = read_probe(path, limit=3)
    assert probe.texts == ["t0", "t1", "t2"] and probe.truncated
    assert "stopped at limit=3" in probe.summary()
    whole = read_probe(path, limit=5)
    assert len(whole) == 5 and not whole.truncated
    assert "stopped at" not in whole.summary()
    with pytest.raises(ValueError):
        read_probe(path, limit=0)


def test_read_probe_strips_a_utf8_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"text": "caf\u00e9"}\n'.encode())
    assert read_probe(path).texts == ["caf\u00e9"]


def test_probe_error_malformed_json(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"text": "ok"}, "", '{"text": "broken"'])
    expect_error(lambda: read_probe(path), path, 3, None, "malformed JSON")


def test_probe_error_not_an_object(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"text": "ok"}, '["a", "list"]'])
    expect_error(lambda: read_probe(path), path, 2, None, "JSON object", "array")


def test_probe_error_missing_text_field(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"text": "ok"}, {"txt": "typo"}])
    expect_error(lambda: read_probe(path), path, 2, "text", "missing", "txt")


@pytest.mark.parametrize("bad, word", [("", "empty text"), ("  \t ", "whitespace-only")])
def test_probe_error_empty_or_whitespace_text(tmp_path, bad, word):
    path = write_lines(tmp_path / "p.jsonl", [{"text": "ok"}, {"text": "fine"}, {"text": bad}])
    expect_error(lambda: read_probe(path), path, 3, "text", word)


@pytest.mark.parametrize("bad, word", [(42, "number"), (None, "null"), (["a"], "array"), (True, "boolean")])
def test_probe_error_wrong_type_of_text(tmp_path, bad, word):
    path = write_lines(tmp_path / "p.jsonl", [{"text": bad}])
    expect_error(lambda: read_probe(path), path, 1, "text", "expected a string", word)


def test_probe_error_wrong_type_of_label(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": 1.5}])
    expect_error(lambda: read_probe(path), path, 2, "label", "expected a string or an integer")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_probe_error_empty_file(tmp_path, content):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    expect_error(lambda: read_probe(path), path, None, None, "empty file")


def test_probe_error_duplicate_ids(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl", [{"text": "a", "id": "x"}, {"text": "b", "id": "y"}, {"text": "c", "id": "x"}]
    )
    expect_error(lambda: read_probe(path), path, 3, "id", "duplicate id 'x'", "line 1")


def test_probe_error_label_on_some_lines_only(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])
    expect_error(lambda: read_probe(path), path, 2, "label", "missing here", "line 1")
    path = write_lines(tmp_path / "q.jsonl", [{"text": "a"}, {"text": "b", "label": "x"}])
    expect_error(lambda: read_probe(path), path, 2, "label", "present here")


def test_probe_error_duplicate_key_in_one_object(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ['{"text": "a", "text": "b"}'])
    expect_error(lambda: read_probe(path), path, 1, "text", "twice")


def test_probe_error_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    expect_error(lambda: read_probe(path), path, 2, None, "UTF-8", "0xe9")


def test_probe_error_corrupt_gzip(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(b"this is not gzip data at all\n")
    expect_error(lambda: read_probe(path), path, 1, None, "corrupt gzip")


# ------------------------------------------------------------------------------------------
# query/document pairs


def test_read_pairs_merges_identical_texts_and_keeps_grades_categories_negatives(tmp_path):
    path = write_lines(
        tmp_path / "pairs.jsonl",
        [
            {
                "query": "what is a cat",
                "document": "cats purr",
                "relevance": 2,
                "category": "animals",
                "negative": ["cars drive", "dogs bark"],
            },
            {"query": "what is a cat", "document": "cats are felines", "category": "animals", "negative": "dogs bark"},
            "",
            {"query": "what is a car", "document": "cars drive", "category": "vehicles", "negative": "cats purr"},
        ],
    )
    rs = read_pairs(path)
    assert rs.queries == {"q0": "what is a cat", "q1": "what is a car"}
    # documents in order of first appearance, hard negatives included
    assert rs.corpus == {"d0": "cats purr", "d1": "cars drive", "d2": "dogs bark", "d3": "cats are felines"}
    assert rs.qrels == {"q0": {"d0": 2, "d3": 1}, "q1": {"d1": 1}}
    assert rs.categories == {"q0": "animals", "q1": "vehicles"}
    assert rs.hard_negatives == {"q0": ["d1", "d2"], "q1": ["d0"]}
    assert rs.query_ids() == ["q0", "q1"] and rs.doc_ids() == ["d0", "d1", "d2", "d3"]
    assert rs.relevance_matrix().tolist() == [[2, 0, 0, 1], [0, 1, 0, 0]]
    assert rs.hard_negative_matrix().tolist() == [[False, True, True, False], [True, False, False, False]]
    assert rs.summary() == (
        f"read 2 queries, 4 documents, 3 relevance judgements (grades 1-2), 3 hard negatives, 2 categories from {path}"
    )


def test_read_pairs_uses_given_ids_and_derives_the_rest_without_clashes(tmp_path):
    path = write_lines(
        tmp_path / "pairs.jsonl",
        [
            {"query": "first", "document": "doc a"},
            {"query": "second", "query_id": "q0", "document": "doc b", "document_id": "B"},
            {"query": "first", "document": "doc b"},
        ],
    )
    rs = read_pairs(path)
    # "q0" belongs to the second query, so the first query's derived id skips it
    assert rs.queries == {"q1": "first", "q0": "second"}
    assert rs.corpus == {"d0": "doc a", "B": "doc b"}
    assert rs.qrels == {"q1": {"d0": 1, "B": 1}, "q0": {"B": 1}}
    assert rs.categories is None
    assert rs.hard_negatives == {"q1": [], "q0": []}


@pytest.mark.parametrize(
    "grade, word", [(0, "bad grade 0"), (-2, "bad grade -2"), ("2", "a string"), (1.5, "number"), (True, "boolean")]
)
def test_pairs_error_bad_relevance(tmp_path, grade, word):
    path = write_lines(
        tmp_path / "p.jsonl", [{"query": "q", "document": "a"}, {"query": "q", "document": "b", "relevance": grade}]
    )
    expect_error(lambda: read_pairs(path), path, 2, "relevance", word)


def test_pairs_error_missing_document(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"query": "q", "doc": "a"}])
    expect_error(lambda: read_pairs(path), path, 1, "document", "missing")


def test_pairs_error_empty_query(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"query": "q", "document": "a"}, {"query": " ", "document": "a"}])
    expect_error(lambda: read_pairs(path), path, 2, "query", "whitespace-only")


def test_pairs_categories_per_pair_split_a_query_by_category(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            {"query": "q", "document": "a", "category": "x", "relevance": 2},
            {"query": "q", "document": "b", "category": "y"},
            {"query": "r", "document": "b", "category": "y"},
        ],
    )
    rs = read_pairs(path)
    assert rs.categories is None
    assert rs.pair_categories == {"q0": {"d0": "x", "d1": "y"}, "q1": {"d1": "y"}}
    assert rs.qrels == {"q0": {"d0": 2, "d1": 1}, "q1": {"d1": 1}}  # overall: every relevant document
    assert rs.category_rows() == [("q0", "x", {"d0": 2}), ("q0", "y", {"d1": 1}), ("q1", "y", {"d1": 1})]
    assert "2 categories given per pair (1 query in several)" in rs.summary()


def test_pairs_one_category_per_query_keeps_query_categories(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            {"query": "q", "document": "a", "category": "x"},
            {"query": "q", "document": "b", "category": "x"},
            {"query": "r", "document": "b", "category": "y"},
        ],
    )
    rs = read_pairs(path)
    assert rs.categories == {"q0": "x", "q1": "y"} and rs.pair_categories is None
    assert rs.category_rows() == [("q0", "x", {"d0": 1, "d1": 1}), ("q1", "y", {"d1": 1})]


def test_pairs_split_by_category_hand_checked_ndcg():
    """Query q has relevant a (category x, grade 2) and c (category y); doc b is not relevant.
    Scores order the documents a, b, c for q. By hand (trec_eval gains g / log2(1 + rank)):
    overall NDCG@10 = (2/1 + 1/2) / (2/1 + 1/log2(3)) ; in x: a at rank 1 -> 1 ;
    in y: c at rank 3 -> 1/log2(4) = 0.5."""
    import math

    from aquin_monitor.data import RetrievalSet
    from aquin_monitor.signals.retrieval import retrieval_metrics

    rs = RetrievalSet(
        {"q": "Q"},
        {"a": "A", "b": "B", "c": "C"},
        {"q": {"a": 2, "c": 1}},
        None,
        {},
        "-",
        pair_categories={"q": {"a": "x", "c": "y"}},
    )
    query = np.array([[1.0, 0.0]])
    docs = np.array([[1.0, 0.1], [1.0, 0.5], [1.0, 0.9]])  # cosine to q falls a > b > c
    overall = retrieval_metrics(query, docs, [{0: 2, 2: 1}]).as_metrics()
    assert overall["retrieval/ndcg@10"] == pytest.approx((2 + 1 / 2) / (2 + 1 / math.log2(3)))
    assert overall["retrieval/n_queries"] == 1  # the query counts once overall
    table = rs.category_rows()
    position = {"a": 0, "b": 1, "c": 2}
    split = retrieval_metrics(
        query[[0 for _ in table]],
        docs,
        [{position[d]: g for d, g in docs_.items()} for _, _, docs_ in table],
        categories=[c for _, c, _ in table],
    ).by_category()
    assert split["x"]["retrieval/ndcg@10"] == pytest.approx(1.0)
    assert split["y"]["retrieval/ndcg@10"] == pytest.approx(0.5)
    assert split["y"]["retrieval/mrr@10"] == pytest.approx(1 / 3)


def test_pairs_identical_lines_are_counted_once_with_a_warning(tmp_path):
    from aquin_monitor.data import DuplicateLinesWarning

    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"query": "q", "document": "a", "relevance": 2}\n'
        '{"query": "q", "document": "b"}\n'
        '{"relevance": 2,   "document": "a", "query": "q"}\n'  # the same object: other spacing and key order
        '{"query": "q", "document": "b"}\n',
        encoding="utf-8",
    )
    with pytest.warns(DuplicateLinesWarning) as caught:
        rs = read_pairs(path)
    message = str(caught[0].message)
    assert "2 repeated lines counted once" in message
    assert "line 3 (same as line 1)" in message and "line 4 (same as line 2)" in message
    assert rs.qrels == {"q0": {"d0": 2, "d1": 1}}
    assert rs.summary().endswith("read but not kept: 2 repeated lines")


def test_pairs_error_conflicting_relevance_or_category_for_one_pair(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            {"query": "q", "document": "a", "relevance": 2},
            {"query": "q", "document": "b"},
            {"query": "q", "document": "a"},
        ],
    )
    expect_error(lambda: read_pairs(path), path, 3, "relevance", "conflicting relevance", "1 here, 2 on line 1")
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            {"query": "q", "document": "a", "category": "x"},
            {"query": "q", "document": "a", "category": "y"},
        ],
    )
    expect_error(lambda: read_pairs(path), path, 2, "category", "line 1", "'y' here, 'x' there")


def test_pairs_error_category_missing_for_one_query(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            {"query": "q", "document": "a", "category": "x"},
            {"query": "r", "document": "b"},
        ],
    )
    expect_error(lambda: read_pairs(path), path, 2, "category", "missing")


def test_pairs_error_negative_of_wrong_type_or_empty(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"query": "q", "document": "a", "negative": 3}])
    expect_error(lambda: read_pairs(path), path, 1, "negative", "string or a list of strings")
    path = write_lines(tmp_path / "r.jsonl", [{"query": "q", "document": "a", "negative": ["b", ""]}])
    expect_error(lambda: read_pairs(path), path, 1, "negative[1]", "empty text")


def test_pairs_error_negative_that_is_also_relevant(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            {"query": "q", "document": "a"},
            {"query": "q", "document": "b", "negative": "a"},
        ],
    )
    expect_error(lambda: read_pairs(path), path, 2, "negative", "relevant document", "line 1")
    path = write_lines(
        tmp_path / "r.jsonl",
        [
            {"query": "q", "document": "b", "negative": "a"},
            {"query": "q", "document": "a"},
        ],
    )
    expect_error(lambda: read_pairs(path), path, 2, "document", "hard negative", "line 1")


def test_pairs_error_same_pair_with_other_negatives(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl", [{"query": "q", "document": "a"}, {"query": "q", "document": "a", "negative": "b"}]
    )
    expect_error(lambda: read_pairs(path), path, 2, "negative", "line 1", "different 'negative'")


def test_pairs_error_one_id_for_two_texts_or_two_ids_for_one_text(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            {"query": "q", "query_id": "A", "document": "a"},
            {"query": "r", "query_id": "A", "document": "a"},
        ],
    )
    expect_error(lambda: read_pairs(path), path, 2, "query_id", "duplicate id 'A'", "line 1")
    path = write_lines(
        tmp_path / "r.jsonl",
        [
            {"query": "q", "document": "a", "document_id": "D1"},
            {"query": "r", "document": "a", "document_id": "D2"},
        ],
    )
    expect_error(lambda: read_pairs(path), path, 2, "document_id", "'D2'", "'D1'")


def test_pairs_error_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n")
    expect_error(lambda: read_pairs(path), path, None, None, "empty file")


# ------------------------------------------------------------------------------------------
# triplets


def test_read_triplets(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            {"anchor": "a", "positive": "p", "negative": "n"},
            "",
            {"anchor": "b", "positive": "q", "negative": "m"},
        ],
    )
    assert read_triplets(path) == [("a", "p", "n"), ("b", "q", "m")]


def test_triplets_errors(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl", [{"anchor": "a", "positive": "p", "negative": "n"}, {"anchor": "a", "positive": "p"}]
    )
    expect_error(lambda: read_triplets(path), path, 2, "negative", "missing")
    path = write_lines(tmp_path / "u.jsonl", [{"anchor": "a", "positive": 5, "negative": "n"}])
    expect_error(lambda: read_triplets(path), path, 1, "positive", "expected a string")
    path = tmp_path / "v.jsonl"
    path.write_text("")
    expect_error(lambda: read_triplets(path), path, None, None, "empty file")


# ------------------------------------------------------------------------------------------
# BEIR folders


def make_beir(folder: Path, *, compress: bool = True, corpus=None, queries=None, qrels=None) -> Path:
    corpus = (
        corpus
        if corpus is not None
        else [
            {"_id": "d1", "title": "Cats", "text": "Cats purr."},
            {"_id": "d2", "title": "", "text": "Dogs bark."},
            {"_id": "d3", "title": "Cars", "text": "Cars drive."},
            {"_id": "d4", "text": "No title field."},
            {"_id": "d5", "title": "Boats", "text": "Boats float."},
        ]
    )
    queries = (
        queries
        if queries is not None
        else [
            {"_id": "q1", "text": "do cats purr"},
            {"_id": "q2", "text": "what drives", "metadata": {}},
            {"_id": "q3", "text": "train-only query"},
            {"_id": "q4", "text": "judged but nothing relevant"},
        ]
    )
    qrels = (
        qrels
        if qrels is not None
        else [
            "query-id\tcorpus-id\tscore",
            "q1\td1\t2",
            "q1\td2\t0",
            "",
            "q2\td3\t1",
            "q2\td1\t1",
            "q4\td5\t0",
        ]
    )
    write_lines(folder / ("corpus.jsonl.gz" if compress else "corpus.jsonl"), corpus, compress=compress)
    write_lines(folder / "queries.jsonl", queries)
    write_lines(folder / "qrels" / "test.tsv", qrels)
    return folder


@pytest.mark.parametrize("compress", [True, False])
def test_read_beir_joins_titles_keeps_split_queries_and_grades(tmp_path, compress):
    folder = make_beir(tmp_path / "beir", compress=compress)
    rs = read_beir(folder)
    assert rs.corpus == {
        "d1": "Cats Cats purr.",
        "d2": "Dogs bark.",
        "d3": "Cars Cars drive.",
        "d4": "No title field.",
        "d5": "Boats Boats float.",
    }
    assert rs.queries == {"q1": "do cats purr", "q2": "what drives", "q4": "judged but nothing relevant"}
    assert rs.qrels == {"q1": {"d1": 2}, "q2": {"d3": 1, "d1": 1}, "q4": {}}
    assert rs.categories is None
    assert rs.hard_negatives == {"q1": [], "q2": [], "q4": []}
    assert rs.relevance_matrix().tolist() == [[2, 0, 0, 0, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert rs.summary() == (
        f"read 3 queries, 5 documents, 3 relevance judgements (grades 1-2), 0 hard negatives, "
        f"1 query without a relevant document from {folder} (split 'test'); "
        f"read but not kept: 1 queries outside split 'test', 2 score-0 judgements"
    )


def test_read_beir_max_corpus_keeps_every_judged_document(tmp_path):
    folder = make_beir(tmp_path / "beir")
    # judged: d1, d2, d3, d5 (score 0 included); one more slot goes to the first other document
    assert read_beir(folder, max_corpus=5).doc_ids() == ["d1", "d2", "d3", "d4", "d5"]
    small = read_beir(folder, max_corpus=4)
    assert small.doc_ids() == ["d1", "d2", "d3", "d5"]
    assert "1 documents beyond max_corpus" in small.summary()
    with pytest.raises(ValueError, match="max_corpus=3"):
        read_beir(folder, max_corpus=3)


def test_beir_missing_split_lists_the_splits(tmp_path):
    folder = make_beir(tmp_path / "beir")
    with pytest.raises(FileNotFoundError, match="splits in this folder: test"):
        read_beir(folder, "dev")


def test_beir_error_two_corpus_files(tmp_path):
    folder = make_beir(tmp_path / "beir")
    write_lines(folder / "corpus.jsonl", [{"_id": "d1", "text": "x"}])
    expect_error(lambda: read_beir(folder), folder, None, None, "corpus.jsonl.gz")


def test_beir_error_qrels_unknown_query(tmp_path):
    folder = make_beir(tmp_path / "beir", qrels=["query-id\tcorpus-id\tscore", "q1\td1\t1", "q9\td1\t1"])
    expect_error(lambda: read_beir(folder), folder / "qrels" / "test.tsv", 3, "query-id", "unknown query id 'q9'")


def test_beir_error_qrels_unknown_document(tmp_path):
    folder = make_beir(tmp_path / "beir", qrels=["query-id\tcorpus-id\tscore", "q1\td1\t1", "", "q1\tdX\t0"])
    expect_error(lambda: read_beir(folder), folder / "qrels" / "test.tsv", 4, "corpus-id", "unknown document id 'dX'")


@pytest.mark.parametrize("score", ["x", "-1", "1.5", ""])
def test_beir_error_bad_score(tmp_path, score):
    folder = make_beir(tmp_path / "beir", qrels=["query-id\tcorpus-id\tscore", "q1\td1\t1", f"q2\td3\t{score}"])
    expect_error(lambda: read_beir(folder), folder / "qrels" / "test.tsv", 3, "score", "bad score")


def test_beir_error_qrels_columns_duplicates_and_empty(tmp_path):
    qrels = tmp_path / "beir" / "qrels" / "test.tsv"
    folder = make_beir(tmp_path / "beir", qrels=["query-id\tcorpus-id\tscore", "q1 d1 1"])
    expect_error(lambda: read_beir(folder), qrels, 2, None, "3 tab-separated columns")
    write_lines(qrels, ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td1\t2"])
    expect_error(lambda: read_beir(folder), qrels, 3, "corpus-id", "duplicate judgement", "line 2")
    write_lines(qrels, ["query-id\tcorpus-id\tscore"])
    expect_error(lambda: read_beir(folder), qrels, None, None, "empty file")


def test_beir_error_duplicate_ids_in_queries_and_corpus(tmp_path):
    folder = make_beir(
        tmp_path / "a", queries=[{"_id": "q1", "text": "x"}, {"_id": "q2", "text": "y"}, {"_id": "q1", "text": "z"}]
    )
    expect_error(lambda: read_beir(folder), folder / "queries.jsonl", 3, "_id", "duplicate id 'q1'")
    folder = make_beir(tmp_path / "b", corpus=[{"_id": "d1", "text": "x"}, {"_id": "d1", "text": "y"}])
    expect_error(lambda: read_beir(folder), folder / "corpus.jsonl.gz", 2, "_id", "duplicate id 'd1'")


def test_beir_error_bad_corpus_records(tmp_path):
    folder = make_beir(tmp_path / "a", corpus=[{"_id": "d1", "title": "t", "text": ""}])
    expect_error(lambda: read_beir(folder), folder / "corpus.jsonl.gz", 1, "text", "empty text")
    folder = make_beir(tmp_path / "b", corpus=[{"_id": "d1", "text": "x"}, {"_id": "d2", "title": None, "text": "y"}])
    expect_error(lambda: read_beir(folder), folder / "corpus.jsonl.gz", 2, "title", "null")
    folder = make_beir(tmp_path / "c", corpus=[{"id": "d1", "text": "x"}])
    expect_error(lambda: read_beir(folder), folder / "corpus.jsonl.gz", 1, "_id", "missing")


def test_beir_error_truncated_gzip_corpus(tmp_path):
    folder = make_beir(tmp_path / "beir")
    corpus = folder / "corpus.jsonl.gz"
    records = [{"_id": f"d{i}", "title": "", "text": f"document number {i} " + "word " * 40} for i in range(1, 2001)]
    write_lines(corpus, records, compress=True)
    data = corpus.read_bytes()
    corpus.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as caught:
        read_beir(folder)
    error = caught.value
    assert (error.path, error.field) == (str(corpus), None)
    assert "corrupt gzip" in str(error) and str(error).startswith(f"{corpus}:{error.line}: ")
    # the lines before the damage were read; the error is at the first line that could not be
    assert 1 < error.line <= len(records)


# ------------------------------------------------------------------------------------------
# RetrievalSet built by hand


def test_retrieval_set_rejects_unknown_ids_and_bad_grades():
    with pytest.raises(ValueError, match="unknown doc id"):
        RetrievalSet({"q": "x"}, {"a": "A"}, {"q": {"b": 1}}, None, {}, "-")
    with pytest.raises(ValueError, match="unknown query id"):
        RetrievalSet({"q": "x"}, {"a": "A"}, {"r": {"a": 1}}, None, {}, "-")
    with pytest.raises(ValueError, match="int > 0"):
        RetrievalSet({"q": "x"}, {"a": "A"}, {"q": {"a": 0}}, None, {}, "-")
    with pytest.raises(ValueError, match="hard negative"):
        RetrievalSet({"q": "x"}, {"a": "A"}, {"q": {"a": 1}}, None, {"q": ["z"]}, "-")
    with pytest.raises(ValueError, match="one category per query"):
        RetrievalSet({"q": "x", "r": "y"}, {"a": "A"}, {}, {"q": "c"}, {}, "-")


def test_probe_set_rejects_misaligned_lists():
    with pytest.raises(ValueError):
        ProbeSet(["a", "b"], None, ["0"], "-")
    with pytest.raises(ValueError):
        ProbeSet(["a", "b"], ["x"], ["0", "1"], "-")
    with pytest.raises(ValueError):
        ProbeSet(["a", "b"], None, ["0", "0"], "-")


# ------------------------------------------------------------------------------------------
# bundled data


def test_bundled_dataset_folders_exist():
    for name in BUNDLED_DATASETS:
        assert bundled_dataset(name).is_dir(), name
    with pytest.raises(ValueError, match="scifact"):
        bundled_dataset("msmarco")


def _scifact_counts(split: str) -> tuple[int, int, int, int]:
    """Counted with gzip/json/csv alone: (corpus docs, queries in split, qrels rows, all queries)."""
    folder = bundled_dataset("scifact")
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        docs = sum(1 for line in handle if line.strip())
    with open(folder / "queries.jsonl", encoding="utf-8") as handle:
        all_queries = sum(1 for line in handle if line.strip())
    with open(folder / "qrels" / f"{split}.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return docs, len({row["query-id"] for row in rows}), len(rows), all_queries


@pytest.mark.parametrize("split, expected", [("test", (5183, 300, 339)), ("train", (5183, 809, 919))])
def test_bundled_scifact_counts(split, expected):
    docs, queries, qrels, all_queries = _scifact_counts(split)
    assert (docs, queries, qrels) == expected
    rs = read_beir(bundled_dataset("scifact"), split)
    assert (len(rs.corpus), len(rs.queries), rs.num_judgements()) == expected
    assert rs.not_kept[f"queries outside split '{split}'"] == all_queries - queries
    with open(bundled_dataset("scifact") / "qrels" / f"{split}.tsv", newline="", encoding="utf-8") as handle:
        reference: dict[str, dict[str, int]] = {}
        for row in csv.DictReader(handle, delimiter="\t"):
            reference.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    assert rs.qrels == reference


def test_bundled_scifact_documents_are_title_space_text():
    rs = read_beir(bundled_dataset("scifact"))
    with gzip.open(bundled_dataset("scifact") / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        first = [json.loads(next(handle)) for _ in range(3)]
    for record in first:
        assert rs.corpus[record["_id"]] == record["title"] + " " + record["text"]


def test_scifact_probe_is_deterministic_and_holds_every_relevant_document():
    probe, rs = scifact_probe(n_docs=600, seed=3)
    again, rs_again = scifact_probe(n_docs=600, seed=3)
    assert probe == again and rs.doc_ids() == rs_again.doc_ids()
    other_probe, other_rs = scifact_probe(n_docs=600, seed=4)
    assert other_rs.doc_ids() != rs.doc_ids()

    full = read_beir(bundled_dataset("scifact"))
    relevant = {did for docs in full.qrels.values() for did in docs}
    assert relevant <= set(rs.corpus) and len(rs.corpus) == 600
    assert rs.queries == full.queries and rs.qrels == full.qrels
    # corpus order is the file's order
    order = {did: i for i, did in enumerate(full.corpus)}
    assert [order[d] for d in rs.doc_ids()] == sorted(order[d] for d in rs.doc_ids())

    assert len(probe) == 300 + 600
    assert probe.labels.count("query") == 300 and probe.labels.count("document") == 600
    assert probe.texts == rs.query_texts() + rs.doc_texts()
    assert probe.ids[:2] == [f"q:{q}" for q in rs.query_ids()[:2]]
    assert probe.ids[300] == f"d:{rs.doc_ids()[0]}"
    assert np.array_equal(rs.relevance_matrix().sum(axis=1), [len(full.qrels[q]) for q in rs.query_ids()])
    with pytest.raises(ValueError, match="n_docs"):
        scifact_probe(n_docs=10)


def test_bundled_probe_sets_count_independently():
    for name, expected_labels in (("banking77", 77), ("agnews", 4)):
        path = bundled_dataset(name) / "test.jsonl"
        with open(path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        probe = read_probe(path)
        assert probe.texts == [row["text"] for row in rows]
        assert len(probe.label_names()) == len({row["label"] for row in rows}) == expected_labels


def test_bundled_snli_triplets():
    path = bundled_dataset("snli_triplets") / "dev.jsonl"
    with open(path, encoding="utf-8") as handle:
        count = sum(1 for line in handle if line.strip())
    triplets = read_triplets(path)
    assert len(triplets) == count == 2943
