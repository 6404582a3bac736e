"""Free text (a chief complaint) as a fixed-width vector, with no vocabulary.

A text is normalised (NFKC, which also turns full-width letters, digits and punctuation into
half-width ones; lower case; punctuation and symbols to spaces), cut into terms and hashed:

- runs of CJK characters give character 1-3-grams (``胸痛三天`` -> 胸, 痛, …, 胸痛, 痛三, …, 痛三天),
  so Chinese needs no word segmenter and a one-character typo spoils only the n-grams that touch it;
- other words give word unigrams and bigrams (``chest pain``), plus character 3-grams of each
  word with boundary marks (``<ch``, ``che``, …, ``st>``), so ``chset`` still shares most of
  ``chest``'s features.

Each term's count becomes ``1 + log(count)`` (sublinear tf), goes with a sign into one of
``buckets`` columns picked by a keyed BLAKE2b hash (signed hashing: collisions cancel on average
instead of adding up), and the row is scaled to unit length. The hash is fixed by the task spec and
public; no vocabulary is fitted, so every site builds the same columns from its own texts alone and
nothing but numbers per bucket ever exists outside the site. The terms of one text are recomputed
from that text whenever they are needed (explanations), never stored.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import numpy as np

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_HASH_KEY", "MAX_CHARS", "Term", "TextHasher", "normalise", "terms"]

DEFAULT_BUCKETS = 256
DEFAULT_HASH_KEY = "fenji-text-v1"
# A chief complaint is a line or two; a pasted letter is cut here so scoring time stays bounded.
MAX_CHARS = 500
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]+")
_SPACES = re.compile(r"\s+")


def normalise(text: object) -> str:
    """NFKC, lower case, punctuation and symbols as spaces, single spaces; ``""`` for no text."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    folded = unicodedata.normalize("NFKC", str(text)[:MAX_CHARS]).lower()
    kept = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in folded)
    return _SPACES.sub(" ", kept).strip()


@dataclass(frozen=True)
class Term:
    """One term of a text: its hashed ``key`` and the word a reader sees (``shown``)."""

    key: str
    shown: str


def _latin_terms(words: Sequence[str]) -> Iterable[Term]:
    for word in words:
        yield Term("w:" + word, word)
        marked = f"<{word}>"
        for i in range(max(len(marked) - 2, 1)):
            yield Term("c:" + marked[i : i + 3], word)


def _cjk_terms(run: str) -> Iterable[Term]:
    for n in (1, 2, 3):
        for i in range(len(run) - n + 1):
            gram = run[i : i + n]
            yield Term("c:" + gram, gram)


def terms(text: object) -> list[Term]:
    """The terms of one text, in reading order (a term appears once per occurrence)."""
    out: list[Term] = []
    for chunk in normalise(text).split(" "):
        words: list[str] = []  # the non-CJK word of this chunk before the next CJK run
        pos = 0
        for match in _CJK.finditer(chunk):
            words += [w for w in [chunk[pos : match.start()]] if w]
            out += _latin_terms(words)
            words = []
            out += _cjk_terms(match.group())
            pos = match.end()
        words += [w for w in [chunk[pos:]] if w]
        out += _latin_terms(words)
    return _join_word_bigrams(out)


def _join_word_bigrams(found: list[Term]) -> list[Term]:
    """Add bigrams of consecutive words (``chest`` ``pain`` -> ``chest pain``)."""
    words = [t.shown for t in found if t.key.startswith("w:")]
    return found + [Term(f"w:{a} {b}", f"{a} {b}") for a, b in pairwise(words)]


class TextHasher:
    """Signed, keyed feature hashing of texts into ``buckets`` columns (see the module docstring).

    Stateless apart from its two settings: ``transform`` needs no ``fit`` and sees one text at a time.
    """

    def __init__(self, buckets: int = DEFAULT_BUCKETS, key: str = DEFAULT_HASH_KEY) -> None:
        self.buckets = buckets
        self.key = key
        self._slot = _slot_function(buckets, key)

    def slot(self, term_key: str) -> tuple[int, float]:
        """``(bucket, sign)`` of a term: the same in every process, on every machine."""
        return self._slot(term_key)

    def weights(self, text: object) -> list[tuple[Term, int, float]]:
        """``(term, bucket, signed value)`` per distinct term of ``text``, as placed in its row
        (sublinear tf, after the row's scaling to unit length); the values of one bucket add up to
        the row's entry there."""
        return list(_weights(self.buckets, self.key, normalise(text)))

    def transform(self, texts: Sequence[object]) -> np.ndarray:
        """``(len(texts), buckets)`` float32 rows of unit length (all zeros for an empty text)."""
        out = np.zeros((len(texts), self.buckets), dtype=np.float32)
        for i, text in enumerate(texts):
            for _, bucket, value in self.weights(text):
                out[i, bucket] += value
        return out


@lru_cache(maxsize=20_000)
def _weights(buckets: int, key: str, text: str) -> tuple[tuple[Term, int, float], ...]:
    # Cached by the normalised text: the same complaint comes back in the statistics, the training
    # and the evaluation (and from many patients); only this process's memory holds it.
    found = terms(text)
    counts = Counter(t.key for t in found)
    shown = {t.key: t.shown for t in found}
    slot = _slot_function(buckets, key)
    placed = [(Term(k, shown[k]), *slot(k), 1.0 + math.log(c)) for k, c in counts.items()]
    row = np.zeros(buckets)
    for _, bucket, sign, tf in placed:
        row[bucket] += sign * tf
    norm = float(np.linalg.norm(row)) or 1.0
    return tuple((term, bucket, sign * tf / norm) for term, bucket, sign, tf in placed)


@lru_cache(maxsize=64)
def _slot_function(buckets: int, key: str):
    secret = key.encode("utf-8")

    @lru_cache(maxsize=200_000)
    def slot(term_key: str) -> tuple[int, float]:
        digest = hashlib.blake2b(term_key.encode("utf-8"), digest_size=8, key=secret).digest()
        return int.from_bytes(digest[:6], "little") % buckets, (1.0 if digest[7] & 1 else -1.0)

    return slot
