"""Feature labels without a language model: class-based TF-IDF (c-TF-IDF) of top-activating texts.

c-TF-IDF as BERTopic defines it (Grootendorst 2022, "BERTopic: Neural topic modeling with a
class-based TF-IDF procedure", eq. 1; ``bertopic.vectorizers.ClassTfidfTransformer``): all texts of
a class are joined into one document, and term ``x`` in class ``c`` weighs

    W_{x,c} = tf_{x,c} / Σ_x' tf_{x',c} · log(1 + A / f_x)

with ``tf_{x,c}`` the count of ``x`` in class ``c``, ``f_x`` the count of ``x`` over all classes
and ``A`` the average number of words per class. Counting is scikit-learn's ``CountVectorizer``
with its English stop-word list. Here a class is one feature's top-activating texts, and the whole
corpus joins the classes as one more (background) class, so words frequent anywhere in the corpus
get a small ``log(1 + A/f_x)`` even if few features' top texts hold them.

Example:

    >>> texts = ["the cat sat", "a cat purred", "stocks fell", "stocks rose", "rain today", "sun today"]
    >>> ctfidf_labels(texts, [[0, 1], [2, 3]], top_terms=1)
    [['cat'], ['stocks']]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.preprocessing import normalize

__all__ = ["class_tfidf", "ctfidf_labels"]


def class_tfidf(
    counts: scipy.sparse.spmatrix | np.ndarray, *, words_per_class: float | None = None
) -> scipy.sparse.csr_matrix:
    """BERTopic's c-TF-IDF weights from a class-by-term count matrix.

    Args:
        counts: ``[n_classes, n_terms]`` term counts, one row per class document.
        words_per_class: ``A``, when some class's words are not all columns of ``counts`` (a streamed
            background class counted only over the other classes' terms); default: mean row sum.

    Returns:
        ``W`` of the same shape: ``tf_{x,c}/Σ_x tf_{x,c} · log(1 + A/f_x)``.

    >>> w = class_tfidf(np.array([[2, 0], [1, 1]]))
    >>> np.round(w.toarray(), 3).tolist()  # A = 2, f = (3, 1)
    [[0.511, 0.0], [0.255, 0.549]]
    """
    counts = scipy.sparse.csr_matrix(counts, dtype=np.float64)
    frequency = np.asarray(counts.sum(axis=0)).ravel()
    average_words = float(counts.sum(axis=1).mean()) if words_per_class is None else float(words_per_class)
    idf = np.log(1.0 + average_words / np.maximum(frequency, 1e-12))
    idf[frequency == 0] = 0.0
    return scipy.sparse.csr_matrix(normalize(counts, norm="l1", axis=1).multiply(idf[None, :]))


def ctfidf_labels(
    texts: Sequence[str] | Mapping[int, str],
    classes: Sequence[Sequence[int]],
    *,
    top_terms: int = 3,
    background: bool = True,
    corpus: Iterable[Sequence[str]] | None = None,
) -> list[list[str]]:
    """Top c-TF-IDF terms of each class of texts (e.g. each feature's top-activating texts).

    The background class is counted chunk by chunk, only over the classes' own terms (its total word
    count is kept for ``A``), so a corpus of any size is read once and never held: the weights are
    those of the joined corpus as one document.

    Args:
        texts: the texts the classes index (a sequence, or a mapping holding at least the members).
        classes: per class, indices into ``texts`` (its top-activating texts); empty classes get ``[]``.
        top_terms: terms per label.
        background: add the whole corpus as one more class, so ``f_x`` counts corpus-wide use.
        corpus: the whole corpus as chunks of texts, for the background (default: ``[texts]``).

    Returns:
        Per class, up to ``top_terms`` terms, highest weight first (ties: alphabetical); terms of
        weight 0 are left out.
    """
    if background and corpus is None and isinstance(texts, Mapping):
        raise ValueError(
            "ctfidf_labels: texts given as a mapping of rows need corpus= (the whole corpus) for the background"
        )
    documents = [" ".join(texts[i] for i in members) for members in classes]
    vectorizer = CountVectorizer(stop_words="english")
    try:
        counts = vectorizer.fit_transform(documents) if documents else None
    except ValueError:  # no term at all (only stop words, digits or punctuation)
        counts = None
    if counts is None:
        return [[] for _ in classes]
    words_per_class = None
    if background:
        background_counts, background_words = _background_counts(vectorizer, [texts] if corpus is None else corpus)
        counts = scipy.sparse.vstack([counts, background_counts]).tocsr()
        words_per_class = (float(counts[: len(classes)].sum()) + background_words) / (len(classes) + 1)
    weights = class_tfidf(counts, words_per_class=words_per_class)
    vocabulary = vectorizer.get_feature_names_out()
    labels = []
    for c in range(len(classes)):
        row = weights.getrow(c)
        order = sorted(zip(-row.data, vocabulary[row.indices]))[:top_terms]
        labels.append([str(term) for weight, term in order if weight < 0])
    return labels


def _background_counts(
    vectorizer: CountVectorizer, corpus: Iterable[Sequence[str] | Mapping[int, str]]
) -> tuple[scipy.sparse.csr_matrix, int]:
    """Counts of ``vectorizer``'s terms over the whole corpus (one row) and the corpus's word count.

    One pass of the vectorizer's own analyser per text (the tokens ``CountVectorizer`` would count), both
    numbers from the same tokens.
    """
    vocabulary = vectorizer.vocabulary_
    analyse = vectorizer.build_analyzer()
    total = np.zeros(len(vocabulary), dtype=np.int64)
    words = 0
    for chunk in corpus:
        hits: list[int] = []
        for text in chunk.values() if isinstance(chunk, Mapping) else chunk:
            tokens = analyse(text)
            words += len(tokens)
            hits.extend(vocabulary[token] for token in tokens if token in vocabulary)
        total += np.bincount(np.asarray(hits, dtype=np.int64), minlength=len(vocabulary))
    return scipy.sparse.csr_matrix(total[None, :]), words
