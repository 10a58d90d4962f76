"""Label-free scores of feature labels: is a label shared by the feature's top texts, and does it single them out?

For feature ``j`` with label terms ``t_1, …, t_k`` and top-activating texts ``T_j`` (the page's top 10):

- **term support**: ``support_first`` = share of ``T_j`` holding ``t_1`` (as a run of whole words, case
  folded: :func:`holds_term`), ``support_any`` = share holding at least one ``t_i``. A label whose first
  term sits in 1 of 10 top texts names that one text, not the feature.
- **label AUC**: embed the label phrase ``"t_1, …, t_k"`` with the model itself; score each text by
  cosine to it; ROC AUC of ``T_j`` (positives) against random corpus texts (negatives), in its Mann–Whitney
  form (:func:`rank_auc`, equal to scikit-learn's ``roc_auc_score``): 1 = every top text is closer to
  the label than every random text, 0.5 = chance.
- **cohesion**: mean pairwise cosine of ``T_j``'s embeddings minus that of the random texts (exact,
  ``(‖Σ x̂‖² − m) / (m(m − 1))``); above 0: the top texts share more than any texts of the corpus do.
  It scores the feature, not its label (a label cannot be better than its texts are alike).

:func:`summarise` gives the distribution over features: median and quartiles of each score and the share
of labels whose first term is in at least half of the top texts (5 of 10).

Example:

    >>> holds_term("A man is dancing.", "man is")
    True
    >>> holds_term("A woman is dancing.", "man")
    False
    >>> term_support(["cat, dog", "fish"], ["a cat sat", "dogs", "the cat"])
    (0.6666666666666666, 0.6666666666666666)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ..rows import RowSource, gather_rows

__all__ = [
    "LabelScore",
    "holds_term",
    "label_phrase",
    "mean_pairwise_cosine",
    "score_labels",
    "rank_auc",
    "summarise",
    "term_support",
    "word_tokens",
]

#: Words as the labels count them: runs of letters/digits, case folded (an ellipsis or comma is no word).
WORD = re.compile(r"\w+", re.UNICODE)


def word_tokens(text: str) -> list[str]:
    """Lower-case word tokens of ``text``.

    >>> word_tokens("A man's  hat…")
    ['a', 'man', 's', 'hat']
    """
    return WORD.findall(text.lower())


def holds_term(text: str, term: str) -> bool:
    """Whether ``text`` holds ``term``'s words as a contiguous run of whole words (case folded)."""
    words, wanted = word_tokens(text), word_tokens(term)
    if not wanted:
        return False
    width = len(wanted)
    return any(words[i : i + width] == wanted for i in range(len(words) - width + 1))


def term_support(terms: Sequence[str], texts: Sequence[str]) -> tuple[float, float]:
    """``(support_first, support_any)``: shares of ``texts`` holding the first term, and any term, of ``terms``.

    ``terms`` may be ``["t1", "t2"]`` or one comma-joined string per term (``"t1, t2"`` splits).
    """
    flat = [part.strip() for term in terms for part in term.split(",") if part.strip()]
    if not flat or not texts:
        return 0.0, 0.0
    first = float(np.mean([holds_term(t, flat[0]) for t in texts]))
    anyone = float(np.mean([any(holds_term(t, term) for term in flat) for t in texts]))
    return first, anyone


def label_phrase(terms: Sequence[str]) -> str:
    """The text a label is embedded as: its terms joined by ``", "`` (a template's ``…`` dropped).

    >>> label_phrase(["a man is …", "dancing"])
    'a man is, dancing'
    """
    return ", ".join(t.replace("…", "").strip() for t in terms if t.replace("…", "").strip())


def mean_pairwise_cosine(x: np.ndarray) -> float:
    """Mean cosine over all distinct pairs of rows: ``(‖Σ x̂ᵢ‖² − m) / (m(m − 1))``, exact in O(m·d).

    >>> round(mean_pairwise_cosine(np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])), 4)  # (0 + .7071·2) / 3
    0.4714
    """
    m = len(x)
    if m < 2:
        return 0.0
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    total = unit.sum(axis=0)
    return float((total @ total - m) / (m * (m - 1)))


@dataclass
class LabelScore:
    """Scores of one feature's label over its top texts (see the module docstring)."""

    feature: int
    support_first: float
    support_any: float
    auc: float | None
    """None when no encoder was given (the label is not embedded)."""
    cohesion: float
    n_top: int


def score_labels(
    labels: Mapping[int, Sequence[str]],
    top_rows: Mapping[int, Sequence[int]],
    embeddings: np.ndarray | RowSource,
    texts: Sequence[str] | Mapping[int, str],
    *,
    encode: Callable[[list[str]], np.ndarray] | None = None,
    random_texts: int = 256,
    seed: int = 0,
    random_rows: np.ndarray | None = None,
) -> list[LabelScore]:
    """Term support, label AUC and cohesion of every labelled feature.

    Args:
        labels: per feature, its label terms.
        top_rows: per feature, the corpus rows of the top texts the label is scored on.
        embeddings: the corpus embeddings (rows of ``top_rows`` and the random sample are read).
        texts: the corpus texts by row (a mapping needs the top rows only).
        encode: the model's encoder, phrases in, ``[n, d]`` out; called once for all labels. Without it
            ``auc`` is None.
        random_texts: random corpus rows, the negatives of the AUC and the cohesion baseline (one sample for
            all features; a feature's own top rows are left out of its negatives).
        seed: seeds the sample.
        random_rows: the random rows to use instead of drawing them.

    Returns:
        One :class:`LabelScore` per feature of ``labels``, in its order.
    """
    n = len(embeddings)
    sample = (
        np.sort(np.random.default_rng(seed).choice(n, size=min(random_texts, n), replace=False))
        if random_rows is None
        else np.asarray(random_rows, dtype=np.int64)
    )
    random_vectors = gather_rows(embeddings, sample)
    baseline = mean_pairwise_cosine(random_vectors)
    features = list(labels)
    phrases = [label_phrase(labels[j]) for j in features]
    label_vectors = encode([p or "-" for p in phrases]) if encode is not None and features else None
    parts = [np.asarray(top_rows[j], dtype=np.int64) for j in features]
    needed = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    needed_vectors = gather_rows(embeddings, needed.astype(np.int64))
    scores = []
    for i, j in enumerate(features):
        rows = np.asarray(top_rows[j], dtype=np.int64)
        vectors = needed_vectors[np.searchsorted(needed, rows)]
        first, anyone = term_support(labels[j], [str(texts[int(r)]) for r in rows])
        auc = None
        if label_vectors is not None and phrases[i] and len(rows):
            negatives = random_vectors[~np.isin(sample, rows)]
            auc = _separation_auc(label_vectors[i], vectors, negatives) if len(negatives) else None
        scores.append(LabelScore(int(j), first, anyone, auc, mean_pairwise_cosine(vectors) - baseline, len(rows)))
    return scores


def _separation_auc(label: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC of cosine-to-``label``: ``positives`` against ``negatives``."""
    unit = label / max(float(np.linalg.norm(label)), 1e-12)
    cosine_pos = positives @ unit / np.maximum(np.linalg.norm(positives, axis=1), 1e-12)
    cosine_neg = negatives @ unit / np.maximum(np.linalg.norm(negatives, axis=1), 1e-12)
    return float(rank_auc(cosine_pos[None, :], cosine_neg[None, :])[0])


def rank_auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> np.ndarray:
    """Per row, the ROC AUC of the scores: ``positive_scores`` ``[k, m]`` against ``negative_scores`` ``[k, n]``.

    Mann–Whitney form: ``AUC = (1 / (m·n)) Σᵢ Σⱼ ([pᵢ > nⱼ] + ½ [pᵢ = nⱼ]) = (R₊ − m(m + 1)/2) / (m·n)`` with ``R₊``
    the positives' rank sum among all ``m + n`` scores (ties at their mean rank: scipy's ``rankdata``), which
    is scikit-learn's ``roc_auc_score`` on the row.

    >>> rank_auc(np.array([[0.9, 0.5], [0.1, 0.5]]), np.array([[0.5, 0.2], [0.5, 0.2]])).tolist()
    [0.875, 0.375]
    """
    m, n = positive_scores.shape[1], negative_scores.shape[1]
    ranks = rankdata(np.concatenate([positive_scores, negative_scores], axis=1), axis=1)
    return (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)


def summarise(scores: Sequence[LabelScore], *, half: float = 0.5) -> dict[str, float | int | None]:
    """The distribution of the scores: ``n``, per score its median, first and third quartile, and
    ``share_first_term_in_half`` (share of labels whose first term is in at least ``half`` of their top texts).

    >>> s = [LabelScore(0, 0.6, 0.8, 0.9, 0.1, 10), LabelScore(1, 0.1, 0.3, 0.7, 0.0, 10)]
    >>> summary = summarise(s)
    >>> summary["share_first_term_in_half"], summary["auc_median"]
    (0.5, 0.8)
    """
    summary: dict[str, float | int | None] = {"n": len(scores)}
    for name in ("support_first", "support_any", "auc", "cohesion"):
        values = np.array([getattr(s, name) for s in scores if getattr(s, name) is not None], dtype=np.float64)
        quartiles = np.percentile(values, [25, 50, 75]).round(4).tolist() if len(values) else [None] * 3
        summary.update({f"{name}_q1": quartiles[0], f"{name}_median": quartiles[1], f"{name}_q3": quartiles[2]})
    first = [s.support_first >= half - 1e-12 for s in scores]
    summary["share_first_term_in_half"] = round(float(np.mean(first)), 4) if first else None
    return summary
