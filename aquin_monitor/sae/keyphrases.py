"""Feature labels as key phrases shared by the top texts, ranked by the model's own embeddings (KeyBERT-like).

For one feature with top texts ``T`` (``m`` of them) and corpus embeddings whose unit rows average to ``μ``
(over a random sample of the corpus):

1. **Frame**: the longest leading word run of 2–4 words (case folded) that at least ``template_share`` of
   ``T`` begin with and that holds a content word (not only stop words), e.g. ``"a man is …"`` when most
   top texts read "A man is <verb>-ing": the feature is a template, and the label says so.
2. **Candidates**: the 1-, 2- and 3-word runs of ``T`` (scikit-learn's ``CountVectorizer``, every word
   kept, so a candidate is a run of whole words as the text has it) that neither start nor end with a
   stop word, held by at least ``min_share`` of ``T`` (and by 2 texts at least): a label term must be
   shared by a good part of the top texts.
3. **Relevance**: ``cos(e_c − μ, c_T − μ)`` with ``e_c`` the candidate's embedding and ``c_T`` the mean
   of ``T``'s unit embeddings (KeyBERT's document–phrase cosine, Grootendorst 2020; BERTopic's
   ``KeyBERTInspired``), both centred on the corpus mean so that what every text shares (the model's
   common direction) does not count.
4. **Maximal marginal relevance** (Carbonell & Goldstein 1998; BERTopic's ``MaximalMarginalRelevance``):
   pick the most relevant candidate, then repeatedly the one maximising
   ``(1 − diversity)·relevance − diversity·max cos(e_c, e_chosen)``, skipping a candidate whose words are
   a run inside a chosen term (or the frame) or hold one.

The label is the frame (if any) and then the chosen terms, ``top_terms`` in all, most shared first. MMR picks
first among candidates held by ``majority_share`` (half) of ``T``, then by ``min_share``, then (when fewer
than ``top_terms`` reach it) by ``fill_share`` of ``T`` (2 texts at least).
Nothing is downloaded: the embeddings are those of the model that the SAE reads, called once for all candidates.

Example (a toy encoder: one axis per word):

    >>> words = ["cat", "sat", "dog", "ran", "mat"]
    >>> def encode(phrases):
    ...     return np.array([[float(w in p.split()) for w in words] for p in phrases]) + 1e-3
    >>> texts = ["the cat sat", "a cat sat down", "the dog ran", "a dog ran off", "mat"]
    >>> vectors = encode(texts)
    >>> keyphrase_labels(texts, [[0, 1], [2, 3]], vectors, encode, top_terms=1)
    [['cat sat'], ['dog ran']]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from ..rows import RowSource, gather_rows
from .label_quality import holds_term, word_tokens

__all__ = ["candidate_phrases", "corpus_centre", "keyphrase_labels", "maximal_marginal_relevance", "template_frame"]


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
    majority_share: float = 0.5,
    min_share: float = 0.3,
    fill_share: float = 0.2,
    template_share: float = 0.6,
    diversity: float = 0.3,
    max_candidates: int = 40,
    corpus_sample: int = 2048,
    seed: int = 0,
    centre: np.ndarray | None = None,
) -> list[list[str]]:
    """Labels of classes of texts (each feature's top texts) as frames and key phrases (module docstring).

    Args:
        texts: the corpus texts by row (a mapping needs the class members only).
        classes: per class, rows of ``texts`` (its top-activating texts, best first).
        embeddings: the corpus embeddings by row (the class members and a random sample are read).
        encode: the model's encoder (phrases in, ``[n, d]`` out), called once with every candidate.
        top_terms: terms per label, the frame included.
        majority_share: candidates held by this share of the texts are picked first.
        min_share: least share of a class's texts holding a candidate.
        fill_share: when fewer than ``top_terms`` candidates reach ``min_share``, the rest of the label is
            picked (the same way) among candidates held by at least this share (and 2 texts).
        template_share: least share of a class's texts beginning with a frame.
        diversity: MMR's weight on novelty (0: by relevance alone).
        max_candidates: most supported candidates per class that are embedded and ranked.
        corpus_sample: random corpus rows whose mean unit embedding centres the cosines.
        seed: seeds the sample.
        centre: the corpus's mean unit embedding, when known (then no sample is read).

    Returns:
        Per class, up to ``top_terms`` terms (a frame ends in ``…``); ``[]`` for an empty class.
    """
    members = [[int(i) for i in c] for c in classes]
    local = {i: str(texts[i]) for c in members for i in c}
    rows = sorted(local)
    order = {r: k for k, r in enumerate(rows)}
    ordered_texts = [local[r] for r in rows]
    supports = candidate_phrases(
        ordered_texts, [[order[i] for i in c] for c in members], min_share=min(min_share, fill_share)
    )
    supports = [dict(list(s.items())[:max_candidates]) for s in supports]
    phrases = sorted({p for s in supports for p in s})
    phrase_vectors = _unit(np.asarray(encode(phrases), dtype=np.float64)) if phrases else np.zeros((0, 1))
    where = {p: k for k, p in enumerate(phrases)}
    mean = corpus_centre(embeddings, sample=corpus_sample, seed=seed) if centre is None else np.asarray(centre)
    member_vectors = _unit(gather_rows(embeddings, np.asarray(rows, dtype=np.int64)))
    labels: list[list[str]] = []
    for c, support in zip(members, supports):
        if not c:
            labels.append([])
            continue
        frame = template_frame([local[i] for i in c], min_share=template_share)
        centre = member_vectors[[order[i] for i in c]].mean(axis=0) - mean
        chosen = [frame] if frame else []
        for least in (majority_share, min_share, 0.0):
            tier = [p for p, share in support.items() if share >= least - 1e-9]
            chosen = _choose_terms(chosen, tier, phrase_vectors, where, centre, mean, top_terms, diversity)
        terms = sorted(chosen[1 if frame else 0 :], key=lambda p: -support[p])  # stable: MMR order among equals
        labels.append(([frame] if frame else []) + terms)
    return labels


def corpus_centre(embeddings: np.ndarray | RowSource, *, sample: int = 2048, seed: int = 0) -> np.ndarray:
    """Mean unit embedding ``μ`` of ``sample`` random rows (all rows when fewer)."""
    n = len(embeddings)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    return _unit(gather_rows(embeddings, rows)).mean(axis=0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _choose_terms(
    chosen: list[str],
    candidates: list[str],
    phrase_vectors: np.ndarray,
    where: dict[str, int],
    centre: np.ndarray,
    mean: np.ndarray,
    top_terms: int,
    diversity: float,
) -> list[str]:
    """``chosen`` (the frame, terms of a stronger tier), then MMR's pick among ``candidates`` (relevance: centred
    cosine to the class centre), skipping any whose words a chosen term holds or that holds a chosen term."""
    chosen = list(chosen)
    said = [t.replace("…", "").strip() for t in chosen]
    candidates = [p for p in candidates if not any(holds_term(t, p) or holds_term(p, t) for t in said)]
    if not candidates or len(chosen) >= top_terms:
        return chosen[:top_terms]
    vectors = phrase_vectors[[where[p] for p in candidates]]
    centred = _unit(vectors - mean)
    relevance = centred @ (centre / max(float(np.linalg.norm(centre)), 1e-12))
    similarity = vectors @ vectors.T
    for k in maximal_marginal_relevance(relevance, similarity, len(candidates), diversity=diversity):
        phrase = candidates[k]
        if any(holds_term(phrase, t.replace("…", "")) or holds_term(t.replace("…", ""), phrase) for t in chosen):
            continue
        chosen.append(phrase)
        if len(chosen) >= top_terms:
            break
    return chosen
