"""The SAE page's data as the page carries it: each distinct text once, records as column tables.

:func:`~aquin_monitor.sae.page.page_data` is the plain structure (every feature's examples as
``{"row", "text", "activation"}`` records, the same abstract repeated in the top-text lists of every
feature it fires; the ``--json`` output keeps it). Embedded as it is, a 600-text probe made a 14.5 MB
page of which 12.8 MB were those repeats. :func:`compact_page_data` writes the same page data as:

- ``texts``: every distinct text shown (feature examples, absorption and polysemy examples) once, in
  first-seen order; everywhere else a text is its index in this list;
- record lists (features, network nodes and edges, absorption pairs, polysemy rows) as column tables
  ``{"columns": [...], "rows": [[...], ...]}`` holding only the fields the page reads (:data:`COLUMNS`);
  a feature's examples are ``[[text index, ...], [activation, ...]]``, its label score
  ``[support_first, support_any, auc, n_top]`` (or null);
- numbers the page shows at one fixed precision and uses for nothing else rounded to those digits,
  once (:data:`SHOWN_DIGITS`): example activations and mean/max activation to 3 decimals (``fmt``),
  total activation to 1, label AUC to 2. Numbers the page computes with (frequencies for the node
  colours, NPMI for edge widths and order) or shows at two precisions (lift, silhouette) stay as they are.

The page's script rebuilds the plain records with ``expandPageData`` (a global function of the
page, so a test can call it); :func:`expand_page_data` is its Python twin, which the tests hold
against both the plain data and the script's result.

    >>> plain = {"features": [{"index": 3, "label": ["x"], "total_activation": 2.04, "frequency": 0.5,
    ...     "mean_activation": 1.0204, "max_activation": 1.5, "label_score": None,
    ...     "examples": [{"row": 7, "text": "a", "activation": 1.23456}, {"row": 2, "text": "a", "activation": 0.5}]}],
    ...     "network": None, "diagnostics": None}
    >>> compact = compact_page_data(plain)
    >>> compact["texts"], compact["features"]["rows"][0][-1]
    (['a'], [[0, 0], [1.235, 0.5]])
    >>> expand_page_data(compact)["features"][0]["examples"]
    [{'text': 'a', 'activation': 1.235}, {'text': 'a', 'activation': 0.5}]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["COLUMNS", "LABEL_SCORE_FIELDS", "SHOWN_DIGITS", "compact_page_data", "expand_page_data"]

#: The fields of each record list the page reads, in the order of its column table.
COLUMNS: dict[str, tuple[str, ...]] = {
    "features": (
        "index",
        "label",
        "total_activation",
        "frequency",
        "mean_activation",
        "max_activation",
        "label_score",
        "examples",
    ),
    "nodes": ("index", "frequency", "mean_activation", "community"),
    "edges": ("source", "target", "count", "npmi", "p_target_given_source", "p_source_given_target"),
    "absorption": (
        "source",
        "target",
        "probability",
        "support",
        "both",
        "target_frequency",
        "lift",
        "q_value",
        "flagged",
        "examples",
    ),
    "polysemy": ("feature", "spread_excess", "spread_z", "silhouette", "silhouette_p", "merged", "examples"),
}

#: A label score's fields the page reads, in the order of its compact list.
LABEL_SCORE_FIELDS: tuple[str, ...] = ("support_first", "support_any", "auc", "n_top")

#: Decimals of the numbers the page shows at one precision only (its ``fmt(x, d)``), by table and field.
SHOWN_DIGITS: dict[str, dict[str, int]] = {
    "features": {"total_activation": 1, "mean_activation": 3, "max_activation": 3},
    "examples": {"activation": 3},
    "label_score": {"auc": 2},
    "nodes": {"mean_activation": 3},
}


def _rounded(value: Any, digits: int | None) -> Any:
    """``value`` rounded to ``digits`` decimals (None and non-numbers left alone)."""
    if digits is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return round(float(value), digits)


def _column_table(
    records: Sequence[Mapping[str, Any]], table: str, convert: Mapping[str, Callable[[Any], Any]] | None = None
) -> dict[str, Any]:
    """``records`` as ``{"columns", "rows"}`` over :data:`COLUMNS[table] <COLUMNS>`, shown numbers rounded,
    ``convert[field]`` applied to a field's value (after the rounding)."""
    columns, digits, convert = COLUMNS[table], SHOWN_DIGITS.get(table, {}), convert or {}
    rows = []
    for record in records:
        row = [_rounded(record[name], digits.get(name)) for name in columns]
        rows.append([convert[name](value) if name in convert else value for name, value in zip(columns, row)])
    return {"columns": list(columns), "rows": rows}


def _records(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The records of a column table (the inverse of :func:`_column_table` but for the dropped fields)."""
    return [dict(zip(table["columns"], row)) for row in table["rows"]]


def compact_page_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """The page's data with each distinct text once and records as column tables (module docstring).

    Args:
        data: :func:`~aquin_monitor.sae.page.page_data`'s result.

    Returns:
        A JSON-serialisable dict: ``data``'s scalars as they are, ``texts``, and ``features``, ``network``
        (``nodes``, ``edges``) and ``diagnostics`` (``absorption``, ``polysemy``, ``merged``) in compact
        form; no ``labels`` (the page rebuilds it from the features).
    """
    ids: dict[str, int] = {}

    def text_id(text: str) -> int:
        return ids.setdefault(text, len(ids))

    def examples(found: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        shown = SHOWN_DIGITS["examples"]["activation"]
        return [[text_id(e["text"]) for e in found], [_rounded(e["activation"], shown) for e in found]]

    def label_score(score: Mapping[str, Any] | None) -> list[Any] | None:
        digits = SHOWN_DIGITS["label_score"]
        return None if score is None else [_rounded(score[name], digits.get(name)) for name in LABEL_SCORE_FIELDS]

    compact = {key: value for key, value in data.items() if key not in ("features", "labels", "network", "diagnostics")}
    compact["features"] = _column_table(
        data["features"], "features", {"examples": examples, "label_score": label_score}
    )
    network = data.get("network")
    if network is not None:
        compact["network"] = {
            **{key: value for key, value in network.items() if key not in ("nodes", "edges")},
            "nodes": _column_table(network["nodes"], "nodes"),
            "edges": _column_table(network["edges"], "edges"),
        }
    else:
        compact["network"] = None
    found = data.get("diagnostics")
    if found is not None:
        sides = {"examples": lambda groups: [[text_id(t) for t in group] for group in groups]}
        compact["diagnostics"] = {
            **{key: value for key, value in found.items() if key not in ("absorption", "polysemy", "merged")},
            "absorption": _column_table(
                found["absorption"], "absorption", {"examples": lambda g: list(map(text_id, g))}
            ),
            "polysemy": _column_table(found["polysemy"], "polysemy", sides),
            "merged": _column_table(found["merged"], "polysemy", sides),
        }
    else:
        compact["diagnostics"] = None
    compact["texts"] = list(ids)
    return compact


def expand_page_data(compact: Mapping[str, Any]) -> dict[str, Any]:
    """The plain records the page draws from :func:`compact_page_data`'s result: the Python twin of the
    page script's ``expandPageData`` (same keys, same order, texts in place of their indices, ``labels``
    rebuilt as ``{str(feature index): label}``)."""
    texts = compact["texts"]
    data = {key: value for key, value in compact.items() if key != "texts"}
    features = _records(compact["features"])
    for feature in features:
        ids, activations = feature["examples"]
        feature["examples"] = [{"text": texts[i], "activation": a} for i, a in zip(ids, activations)]
        score = feature["label_score"]
        feature["label_score"] = None if score is None else dict(zip(LABEL_SCORE_FIELDS, score))
    data["features"] = features
    data["labels"] = {str(feature["index"]): feature["label"] for feature in features}
    network = compact.get("network")
    if network is not None:
        data["network"] = {**network, "nodes": _records(network["nodes"]), "edges": _records(network["edges"])}
    found = compact.get("diagnostics")
    if found is not None:
        absorption = _records(found["absorption"])
        for pair in absorption:
            pair["examples"] = [texts[i] for i in pair["examples"]]
        data["diagnostics"] = {**found, "absorption": absorption}
        for name in ("polysemy", "merged"):
            rows = _records(found[name])
            for row in rows:
                row["examples"] = [[texts[i] for i in side] for side in row["examples"]]
            data["diagnostics"][name] = rows
    return data
