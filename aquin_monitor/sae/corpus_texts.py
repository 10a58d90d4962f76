"""Texts of a corpus too large to hold, read by row number in streamed passes over the corpus file.

The feature statistics name texts by row (top texts, absorption examples); only those few texts are
ever shown. :class:`CorpusTexts` holds no text until asked: :meth:`CorpusTexts.fetch` reads the
corpus once, keeping the texts of the rows asked for (memory O(rows asked)), and ``chunks`` streams the
whole corpus for the c-TF-IDF background. Rows already fetched are not read again.

Example:

    >>> corpus = CorpusTexts(lambda: iter(["a", "b", "c", "d"]), chunk_texts=3)
    >>> corpus.fetch([3, 1]); corpus[3], corpus[1], len(corpus.held)
    ('d', 'b', 2)
    >>> [len(chunk) for chunk in corpus.chunks()]
    [3, 1]
    >>> texts_for(["x", "y"], [1]) == ["x", "y"]
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice

__all__ = ["CorpusTexts", "texts_for"]


class CorpusTexts(Mapping[int, str]):
    """Row → text of a corpus read through ``iterate`` (a function returning a fresh iterator of the texts).

    A mapping of the rows fetched so far: ``corpus[row]`` of a row not fetched raises ``KeyError``
    naming it; functions that take texts call :func:`texts_for` with the rows they will read first.
    """

    def __init__(self, iterate: Callable[[], Iterable[str]], *, chunk_texts: int = 50_000) -> None:
        self._iterate, self.chunk_texts = iterate, chunk_texts
        self.held: dict[int, str] = {}

    def fetch(self, rows: Iterable[int]) -> None:
        """Read the texts of ``rows`` (those not held yet) in one pass, stopping after the last one."""
        wanted = sorted({int(r) for r in rows} - self.held.keys())
        if not wanted:
            return
        position, count = 0, 0
        for row, text in enumerate(self._iterate()):
            count = row + 1
            if row == wanted[position]:
                self.held[row] = text
                position += 1
                if position == len(wanted):
                    return
        raise KeyError(f"corpus: row {wanted[position]} asked for, but the corpus has {count} texts")

    def chunks(self) -> Iterator[list[str]]:
        """The whole corpus in order, ``chunk_texts`` texts at a time."""
        texts = iter(self._iterate())
        while chunk := list(islice(texts, self.chunk_texts)):
            yield chunk

    def __getitem__(self, row: int) -> str:
        try:
            return self.held[int(row)]
        except KeyError:
            raise KeyError(f"corpus: row {row} was not fetched") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self.held)

    def __len__(self) -> int:
        return len(self.held)


def texts_for(texts: Sequence[str] | Mapping[int, str], rows: Iterable[int]) -> Sequence[str] | Mapping[int, str]:
    """``texts``, with the texts of ``rows`` read first when it is a :class:`CorpusTexts`."""
    if isinstance(texts, CorpusTexts):
        texts.fetch(rows)
    return texts
