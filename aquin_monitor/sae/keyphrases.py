"""Feature labels as key phrases shared by the top texts, chosen to single those texts out in the model's own space.

For one feature with top texts ``T`` (``m`` of them) and a random sample ``R`` of corpus texts (not in ``T``):

1. **Frame**: the longest leading word run of 2–4 words (case folded) that at least ``template_share`` of
   ``T`` begin with and that holds a content word (not only stop words), e.g. ``"a man is …"`` when most
   top texts read "A man is <verb>-ing": the feature is a template, and the label may say so.
2. **Candidates**: the frame and the 1-, 2- and 3-word runs of ``T`` (scikit-learn's ``CountVectorizer``,
   every word kept, so a candidate is a run of whole words as the text has it) that neither start nor end
   with a stop word, held by at least ``fill_share`` of ``T`` (and by 2 texts at least): a label term must
   be shared by a good part of the top texts. All candidates of all features are embedded in one call.
3. **Separation**: a phrase with unit embedding ``e`` scores ``AUC(e)``, the ROC AUC with which ``cos(e, x)``
   ranks the texts of ``T`` above those of ``R`` (:func:`~aquin_monitor.sae.label_quality.rank_auc`),
   ties broken by the margin ``mean_T cos − mean_R cos``: the label-free score that
   :mod:`~aquin_monitor.sae.label_quality` reports, computed here on ``T`` only (in-sample selection).
4. **Pool**: ``pool`` candidates picked by maximal marginal relevance (Carbonell & Goldstein 1998; BERTopic's
   ``MaximalMarginalRelevance``) on their AUC: the best, then each time the one maximising
   ``(1 − diversity)·AUC − diversity·max cos(e_c, e_chosen)``.
5. **Label**: among the sets of ``min_terms`` to ``top_terms`` pool phrases (fewer when no larger set can be
   formed) in which no phrase's words are a run inside another's, keep those that (a) hold a phrase of the
   strongest support tier any candidate reaches (held by ``majority_share`` of ``T``, else ``min_share``), so
   the first term is as shared as the tiers allow, and (b) cover (some phrase held by a text) at least the best
   cover of any set minus ``coverage_slack``; pick the set whose embedding separates best (AUC, then margin).
   A set is embedded as its phrases' normalised sum of unit embeddings: an approximation of the joined phrase
   (:func:`~aquin_monitor.sae.label_quality.label_phrase`) that the score embeds, which spares an encoder
   call per set. A set of fewer terms may separate better (a term every random text holds too only blurs
   the label) but holds fewer texts.

The label is the chosen set, the frame first, then the terms most shared first. Nothing is downloaded: the
embeddings are those of the model that the SAE reads, called once for all candidates.

Example (a toy encoder: one axis per word; "cat sat" is in both texts of the first class, "dog ran" in both of
the second, and the random texts hold neither):

    >>> words = ["cat", "sat", "dog", "ran", "mat", "sun"]
    >>> def encode(phrases):
    ...     return np.array([[float(w in p.split()) for w in words] for p in phrases]) + 1e-3
    >>> texts = ["the cat sat", "a cat sat down", "the dog ran", "a dog ran off", "mat", "sun", "mat sun"]
    >>> keyphrase_labels(texts, [[0, 1], [2, 3]], encode(texts), encode, top_terms=1)
    [['cat sat'], ['dog ran']]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer
from threadpoolctl import threadpool_limits

from ..rows import RowSource, gather_rows
from .label_quality import holds_term, label_phrase, rank_auc, word_tokens

__all__ = [
    "best_separating_set",
    "candidate_phrases",
    "keyphrase_labels",
    "maximal_marginal_relevance",
    "separation_scores",
    "template_frame",
]


def template_frame(texts: Sequence[str], *, min_share: float = 0.6, widths: Sequence[int] = (4, 3, 2)) -> str | None:
    """The leading frame of ``texts`` (``"w1 w2 … …"``) when at least ``min_share`` of them begin with it.

    Only frames followed by more words count (the frame is not the whole text), and a frame of stop words
    alone (``"there is a"``) is no frame.

    >>> template_frame(["A man is dancing.", "A man is idling", "a man is thinking", "Two dogs run"])
    'a man is …'
    >>> template_frame(["There is a cat", "There is a dog"]) is None
    True
    """
    tokens = [word_tokens(t) for t in texts]
    for width in sorted(widths, reverse=True):
        heads = Counter(tuple(words[:width]) for words in tokens if len(words) > width)
        for head, count in heads.most_common():
            if count < min_share * len(texts):
                break
            if any(word not in ENGLISH_STOP_WORDS for word in head):
                return " ".join(head) + " …"
    return None


def candidate_phrases(
    texts: Sequence[str], classes: Sequence[Sequence[int]], *, min_share: float = 0.3, max_words: int = 3
) -> list[dict[str, float]]:
    """Per class, its candidate phrases with their support (share of the class's texts holding them).

    >>> candidate_phrases(["red apple pie", "red apple", "blue sky", "a red car"], [[0, 1, 3]], min_share=0.5)
    [{'red': 1.0, 'apple': 0.6666666666666666, 'red apple': 0.6666666666666666}]
    """
    flat = [texts[i] for members in classes for i in members]
    out: list[dict[str, float]] = [{} for _ in classes]
    vectorizer = CountVectorizer(ngram_range=(1, max_words), token_pattern=r"(?u)\b\w+\b", binary=True)
    try:
        present = vectorizer.fit_transform(flat).tocsr()
    except ValueError:  # no word in any text
        return out
    vocabulary = vectorizer.get_feature_names_out()
    usable = np.array([_usable_phrase(p) for p in vocabulary], dtype=bool)
    start = 0
    for c, members in enumerate(classes):
        m = len(members)
        counts = np.asarray(present[start : start + m].sum(axis=0)).ravel()
        start += m
        keep = np.flatnonzero(usable & (counts >= max(2, min_share * m - 1e-9)))
        order = keep[np.lexsort((vocabulary[keep], -counts[keep]))]
        out[c] = {str(vocabulary[t]): float(counts[t] / m) for t in order}
    return out


def _usable_phrase(phrase: str) -> bool:
    words = phrase.split()
    edge_ok = all(w not in ENGLISH_STOP_WORDS and len(w) > 1 and not w.isdigit() for w in (words[0], words[-1]))
    return edge_ok


def maximal_marginal_relevance(
    relevance: np.ndarray, similarity: np.ndarray, count: int, *, diversity: float = 0.3
) -> list[int]:
    """Indices of ``count`` items chosen by MMR: first the most relevant, then each time the item maximising
    ``(1 − diversity)·relevance − diversity·max similarity to those chosen``.

    >>> rel = np.array([0.9, 0.85, 0.5])
    >>> sim = np.array([[1, 0.95, 0.1], [0.95, 1, 0.1], [0.1, 0.1, 1]])
    >>> maximal_marginal_relevance(rel, sim, 2, diversity=0.5)
    [0, 2]
    """
    chosen: list[int] = []
    left = list(range(len(relevance)))
    while left and len(chosen) < count:
        if chosen:
            penalty = similarity[np.ix_(left, chosen)].max(axis=1)
            score = (1 - diversity) * relevance[left] - diversity * penalty
        else:
            score = relevance[left]
        best = left[int(np.argmax(score))]
        chosen.append(best)
        left.remove(best)
    return chosen


def keyphrase_labels(
    texts: Sequence[str] | Mapping[int, str],
    classes: Sequence[Sequence[int]],
    embeddings: np.ndarray | RowSource,
    encode: Callable[[list[str]], np.ndarray],
    *,
    top_terms: int = 3,
    min_terms: int = 1,
    majority_share: float = 0.5,
    min_share: float = 0.3,
    fill_share: float = 0.2,
    template_share: float = 0.6,
    diversity: float = 0.3,
    pool: int = 8,
    coverage_slack: float = 0.1,
    max_candidates: int = 40,
    negatives: int = 512,
    seed: int = 0,
    negative_rows: np.ndarray | None = None,
) -> list[list[str]]:
    """Labels of classes of texts (each feature's top texts) as frames and key phrases (module docstring).

    Args:
        texts: the corpus texts by row (a mapping needs the class members only).
        classes: per class, rows of ``texts`` (its top-activating texts, best first).
        embeddings: the corpus embeddings by row (the class members and the random sample are read).
        encode: the model's encoder (phrases in, ``[n, d]`` out), called once with every candidate.
        top_terms: most terms per label, the frame included.
        min_terms: fewest terms per label, when that many candidates can be combined (fewer terms can
            separate better but hold fewer texts: the any-term support falls).
        majority_share: a label holds a candidate of this share of the texts when there is one.
        min_share: else one of this share, when there is one.
        fill_share: least share of a class's texts (and 2 texts) holding a candidate.
        template_share: least share of a class's texts beginning with a frame.
        diversity: MMR's weight on novelty when the pool is drawn (0: by AUC alone).
        pool: candidates per class drawn by MMR, among which the label's terms are chosen.
        coverage_slack: a label may cover (hold a term of) this share of the texts fewer than the best cover.
        max_candidates: most supported candidates per class that are embedded and scored.
        negatives: random corpus rows whose texts a label must separate the class from (a class's own rows are
            left out of its negatives).
        seed: seeds the sample.
        negative_rows: the random rows to use instead of drawing them.

    Returns:
        Per class, up to ``top_terms`` terms (a frame ends in ``…``); ``[]`` for an empty class or one whose
        texts share no phrase.
    """
    members = [[int(i) for i in c] for c in classes]
    local = {i: str(texts[i]) for c in members for i in c}
    rows = sorted(local)
    order = {r: k for k, r in enumerate(rows)}
    supports = candidate_phrases(
        [local[r] for r in rows], [[order[i] for i in c] for c in members], min_share=min(min_share, fill_share)
    )
    candidates = [
        _with_frame(dict(list(support.items())[:max_candidates]), [local[i] for i in c], template_share)
        for c, support in zip(members, supports)
    ]
    phrases = sorted({label_phrase([term]) for terms in candidates for term in terms})
    phrase_vectors = _unit(np.asarray(encode(phrases), dtype=np.float64)) if phrases else np.zeros((0, 1))
    where = {p: k for k, p in enumerate(phrases)}
    sample, sample_vectors = _negative_sample(embeddings, negatives, seed, negative_rows)
    member_vectors = _unit(np.asarray(gather_rows(embeddings, np.asarray(rows, dtype=np.int64)), dtype=np.float64))
    labels = []
    with threadpool_limits(limits=1, user_api="blas"):  # each class's products are tiny: BLAS threads only contend
        for c, terms in zip(members, candidates):
            labels.append(
                best_separating_set(
                    terms,
                    phrase_vectors[[where[label_phrase([t])] for t in terms]],
                    member_vectors[[order[i] for i in c]],
                    sample_vectors[~np.isin(sample, c)] if np.isin(c, sample).any() else sample_vectors,
                    [local[i] for i in c],
                    top_terms=top_terms,
                    min_terms=min_terms,
                    tiers=(majority_share, min_share),
                    pool=pool,
                    diversity=diversity,
                    coverage_slack=coverage_slack,
                )
                if terms
                else []
            )
    return labels


def _negative_sample(
    embeddings: np.ndarray | RowSource, size: int, seed: int, rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, unit float64 embeddings)`` of ``size`` random corpus rows (all rows when fewer), or of ``rows``."""
    n = len(embeddings)
    if rows is None:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    rows = np.asarray(rows, dtype=np.int64)
    return rows, _unit(np.asarray(gather_rows(embeddings, rows), dtype=np.float64))


def _with_frame(support: dict[str, float], texts: list[str], template_share: float) -> dict[str, float]:
    """The class's candidates with its frame (if any) first, at the share of texts holding the frame's words."""
    frame = template_frame(texts, min_share=template_share) if texts else None
    if frame is None:
        return support
    return {frame: float(np.mean([holds_term(t, frame) for t in texts])), **support}


def separation_scores(cosine_pos: np.ndarray, cosine_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per direction (row): ``(AUC, margin)`` of the cosines of ``positives`` ``[k, m]`` against ``negatives``
    ``[k, n]`` to it.

    AUC as :func:`~aquin_monitor.sae.label_quality.rank_auc`; margin = mean cosine of the positives minus that of
    the negatives. Without negatives (or positives): AUC ½ and margin 0 (nothing to separate).

    >>> auc, margin = separation_scores(np.array([[0.9, 0.7], [0.1, 0.2]]), np.array([[0.2], [0.3]]))
    >>> auc.tolist(), np.round(margin, 2).tolist()
    ([1.0, 0.0], [0.6, -0.15])
    """
    k = len(cosine_pos)
    if not cosine_neg.shape[1] or not cosine_pos.shape[1]:
        return np.full(k, 0.5), np.zeros(k)
    return rank_auc(cosine_pos, cosine_neg), cosine_pos.mean(axis=1) - cosine_neg.mean(axis=1)


def best_separating_set(
    terms: Mapping[str, float],
    vectors: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    texts: Sequence[str],
    *,
    top_terms: int = 3,
    min_terms: int = 1,
    tiers: Sequence[float] = (0.5, 0.3),
    pool: int = 8,
    diversity: float = 0.3,
    coverage_slack: float = 0.1,
) -> list[str]:
    """The label of one class (steps 3–5 of the module docstring): the set of up to ``top_terms`` of ``terms``
    whose normalised sum of unit embeddings best separates ``positives`` (the class's texts) from ``negatives``.

    The cosine of a set ``S`` to a text ``x`` is ``Σ_{t∈S} cos(e_t, x) / ‖Σ_{t∈S} e_t‖`` (unit ``x``, ``e_t``), so
    every set is scored from the terms' cosines and their Gram matrix, without a matrix product per set.

    Args:
        terms: candidate phrase → share of ``texts`` holding it (a frame ends in ``…``).
        vectors: the candidates' embeddings, in the order of ``terms``.
        positives: the class texts' unit embeddings; ``texts`` are their texts.
        negatives: random corpus texts' unit embeddings.
        min_terms: fewest terms of a set, or as many as any allowed set holds when fewer.
        tiers: support shares, strongest first: the set holds a term of the first one some candidate reaches.

    Returns:
        The set's terms, a frame first, then most shared first; ``[]`` without terms.
    """
    names = list(terms)
    if not names:
        return []
    vectors = _unit(np.asarray(vectors, dtype=np.float64))
    cosine_pos, cosine_neg = vectors @ positives.T, vectors @ negatives.T
    auc, _ = separation_scores(cosine_pos, cosine_neg)
    gram = vectors @ vectors.T
    picked = maximal_marginal_relevance(auc, gram, pool, diversity=diversity)
    support = np.array([terms[t] for t in names])
    need = next((t for t in tiers if (support >= t - 1e-9).any()), 0.0)
    strong = support >= need - 1e-9
    if not strong[picked].any():
        picked.append(int(np.flatnonzero(strong)[np.argmax(auc[strong])]))
    sets = _term_sets(names, picked, strong, texts, (min_terms, top_terms), coverage_slack)
    member = np.zeros((len(sets), len(names)))
    for row, combo in enumerate(sets):
        member[row, list(combo)] = 1.0
    norms = np.sqrt(np.maximum(((member @ gram) * member).sum(axis=1), 1e-24))[:, None]
    set_auc, set_margin = separation_scores(member @ cosine_pos / norms, member @ cosine_neg / norms)
    best = sets[int(np.lexsort((np.arange(len(sets)), -set_margin, -set_auc))[0])]
    return sorted((names[k] for k in best), key=lambda t: (not t.endswith("…"), -terms[t]))


def _term_sets(
    names: list[str],
    picked: list[int],
    strong: np.ndarray,
    texts: Sequence[str],
    sizes: tuple[int, int],
    slack: float,
) -> list[tuple[int, ...]]:
    """Sets of the ``picked`` terms: none nested in another, one ``strong`` term at least, of ``sizes[0]`` (or the
    most that can be formed, when fewer) to ``sizes[1]`` terms, covering at least the best cover of ``texts``
    (share holding a term) less ``slack``; in enumeration order."""
    nested = {(a, b) for a in picked for b in picked if a != b and holds_term(names[a], names[b])}
    held = {k: np.array([holds_term(text, names[k]) for text in texts], dtype=bool) for k in picked}
    sets = [
        combo
        for size in range(1, sizes[1] + 1)
        for combo in combinations(picked, size)
        if strong[list(combo)].any()
        and not any((a, b) in nested or (b, a) in nested for a, b in combinations(combo, 2))
    ]
    fewest = min(sizes[0], max((len(combo) for combo in sets), default=0))
    sets = [combo for combo in sets if len(combo) >= fewest]
    cover = np.array([np.any([held[k] for k in combo], axis=0).mean() if len(texts) else 0.0 for combo in sets])
    return [combo for combo, c in zip(sets, cover) if c >= cover.max() - slack - 1e-9]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
