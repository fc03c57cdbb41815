"""Text normalisation and shingle hashing, vectorised over a batch of documents.

A batch of texts becomes one flat array of 64-bit shingle hashes plus a count per
document. Hashing is numpy arithmetic over the batch's code points (polynomial hashes
modulo 2**64, then a 64-bit finaliser), so there is no Python loop per shingle; the
only per-document Python work is normalisation (and jieba, for word shingles).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_U64 = np.uint64
# Odd multiplier of the polynomial string hash (any odd 64-bit constant works).
_BASE = _U64(0x100000001B3 * 2 + 1)


# Everything that is not a letter or a digit: whitespace, punctuation, symbols,
# control and format characters (and the underscore, which \w would keep).
# Unicode-aware `\W` is ~6x faster than a character class of the P/Z/C categories.
_NOT_WORD = re.compile(r"[\W_]+")
# Whitespace and full-width / CJK punctuation, removed before NFKC: every one of them
# is still punctuation or space after NFKC (so the result is the same), and without
# them most Chinese text is already NFKC, which `unicodedata.normalize` detects
# quickly instead of rebuilding the string (3x faster on typical Chinese text).
_PUNCT_BEFORE_NFKC = re.compile(
    r"[\s\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65\u3000-\u3003\u3008-\u3011\u3014-\u301F]+"
)


def normalise(text: str | None) -> str:
    """NFKC, lower case, and everything but letters and digits removed.

    So full- and half-width forms, case, whitespace, punctuation and symbols do not
    make two texts different.
    """
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", _PUNCT_BEFORE_NFKC.sub("", text))
    return _NOT_WORD.sub("", text.lower())


@functools.cache
def _bmp_word_chars() -> np.ndarray:
    """Lookup table over the Basic Multilingual Plane: True where `normalise` keeps the character."""
    return np.fromiter((chr(c).isalnum() for c in range(0x10000)), dtype=bool, count=0x10000)


def _word_mask(cps: np.ndarray) -> np.ndarray:
    if len(cps) == 0 or cps.max() < 0x10000:
        return _bmp_word_chars()[cps]
    keep = np.empty(len(cps), dtype=bool)
    low = cps < 0x10000
    keep[low] = _bmp_word_chars()[cps[low]]
    high, inverse = np.unique(cps[~low], return_inverse=True)  # rare: other planes
    keep[~low] = np.array([chr(c).isalnum() for c in high.tolist()], dtype=bool)[inverse]
    return keep


def normalise_batch(texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """`normalise` for a batch, as (code points, lengths): the flat uint32 code points
    of all normalised texts and each text's length.

    The final "letters and digits only" filter is one numpy lookup over the batch
    instead of a regex per text (about half of the normalisation time).
    """
    prepared = [unicodedata.normalize("NFKC", _PUNCT_BEFORE_NFKC.sub("", t)).lower() if t else "" for t in texts]
    cps, lengths = _code_points(prepared)
    keep = _word_mask(cps)
    if keep.all():
        return cps, lengths
    doc = np.repeat(np.arange(len(prepared)), lengths)
    return cps[keep], np.bincount(doc[keep], minlength=len(prepared)).astype(np.int64)


def texts_of(cps: np.ndarray, lengths: np.ndarray) -> list[str]:
    """The strings back from (code points, lengths)."""
    joined = cps.astype(np.uint32).tobytes().decode("utf-32-le")
    bounds = np.concatenate(([0], np.cumsum(lengths))).tolist()
    return [joined[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def exact_hash(normalised: str) -> int:
    """64-bit hash of a normalised text (equal texts, equal hashes)."""
    return int.from_bytes(hashlib.blake2b(normalised.encode("utf-32-le"), digest_size=8).digest(), "little")


def exact_hashes(cps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`exact_hash` of every text of a (code points, lengths) batch, as uint64."""
    data = cps.astype(np.uint32).tobytes()
    bounds = (np.concatenate(([0], np.cumsum(lengths))) * 4).tolist()
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(data[a:b], digest_size=8).digest(), "little")
            for a, b in zip(bounds[:-1], bounds[1:])
        ),
        dtype=np.uint64,
        count=len(lengths),
    )


def id_hash(doc_id: str) -> int:
    """64-bit hash of a document id (its node in the candidate graph)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8, person=b"synth-id").digest(), "little")


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, vectorised (uint64 in, uint64 out)."""
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
    return h


def _code_points(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' code points as one uint32 array, and each text's length."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    return cps, lengths


def _span_starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if len(lengths) else lengths


def ragged_positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of range(start, start + count) for each (start, count)."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offsets


class _Powers:
    """B**k and B**-k modulo 2**64 for k < n (B odd, so it is invertible)."""

    def __init__(self) -> None:
        self.pow = np.ones(1, dtype=np.uint64)
        self.inv = np.ones(1, dtype=np.uint64)
        self.base_inv = _U64(pow(int(_BASE), -1, 2**64))

    def ensure(self, n: int) -> None:
        if len(self.pow) >= n:
            return
        size = max(n, 2 * len(self.pow))
        with np.errstate(over="ignore"):
            self.pow = np.cumprod(np.full(size, _BASE, dtype=np.uint64))
            self.pow = np.concatenate(([_U64(1)], self.pow[:-1]))
            self.inv = np.cumprod(np.full(size, self.base_inv, dtype=np.uint64))
            self.inv = np.concatenate(([_U64(1)], self.inv[:-1]))


_POWERS = _Powers()


def _span_hashes(cps: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Polynomial hash sum(cp[t] * B**(end-1-t)) of each span [begin, end), via prefix sums."""
    _POWERS.ensure(len(cps) + 1)
    prefix = np.zeros(len(cps) + 1, dtype=np.uint64)
    np.cumsum(cps * _POWERS.inv[: len(cps)], out=prefix[1:])
    return (prefix[end] - prefix[begin]) * _POWERS.pow[end - 1]


def char_shingles(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the character n-grams of each (normalised) text.

    Returns (hashes, counts): a flat uint64 array and the number of hashes of each
    text, in order. A non-empty text shorter than n is one shingle (the whole text);
    an empty text has none.
    """
    return char_shingles_of_code_points(*_code_points(texts), n)


def char_shingles_of_code_points(cps: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`char_shingles` of a (code points, lengths) batch."""
    starts = _span_starts(lengths)
    counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    if len(cps) == 0:
        return np.zeros(0, dtype=np.uint64), counts
    total = len(cps)
    with np.errstate(over="ignore"):
        if n <= total:
            rolling = np.zeros(total - n + 1, dtype=np.uint64)
            for k in range(n):
                rolling *= _BASE
                rolling += cps[k : total - n + 1 + k]
        else:
            rolling = np.zeros(0, dtype=np.uint64)
        full = lengths >= n
        hashes_full = rolling[ragged_positions(starts[full], counts[full])]
        short = (~full) & (lengths > 0)
        if short.any():
            short_hashes = _span_hashes(cps, starts[short], starts[short] + lengths[short])
            # Stitch full-length and short documents back into document order.
            out = np.empty(int(counts.sum()), dtype=np.uint64)
            doc_of = np.repeat(np.arange(len(lengths)), counts)
            is_short = short[doc_of]
            out[~is_short] = hashes_full
            out[is_short] = short_hashes
            hashes = out
        else:
            hashes = hashes_full
        return fmix64(hashes ^ _U64(n)), counts


def word_shingles(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the jieba word n-grams of each (normalised) text.

    A word n-gram is hashed as the character span it covers, so the hashing is the
    same vectorised prefix-sum arithmetic as for characters. A text with fewer than n
    words is one shingle.
    """
    import jieba

    cps, lengths = _code_points(texts)
    starts = _span_starts(lengths)
    word_counts = np.zeros(len(texts), dtype=np.int64)
    word_lengths: list[np.ndarray] = []
    for i, text in enumerate(texts):
        if text:
            lens = np.fromiter(map(len, jieba.lcut(text, HMM=False)), dtype=np.int64)
            word_counts[i] = len(lens)
            word_lengths.append(lens)
    counts = np.where(word_counts >= n, word_counts - n + 1, np.minimum(word_counts, 1))
    if len(cps) == 0:
        return np.zeros(0, dtype=np.uint64), counts
    # jieba's words cover each text exactly and the texts are contiguous in `cps`,
    # so a running sum of word lengths gives every word's absolute start.
    all_lens = np.concatenate(word_lengths)
    word_start = np.cumsum(all_lens) - all_lens
    word_end = word_start + all_lens
    first_word = np.cumsum(word_counts) - word_counts  # index of each doc's first word
    full = word_counts >= n
    begin_idx = ragged_positions(first_word[full], counts[full])
    begin = word_start[begin_idx]
    end = word_end[begin_idx + n - 1]
    short = (~full) & (word_counts > 0)
    with np.errstate(over="ignore"):
        if short.any():
            out = np.empty(int(counts.sum()), dtype=np.uint64)
            doc_of = np.repeat(np.arange(len(texts)), counts)
            is_short = short[doc_of]
            out[~is_short] = _span_hashes(cps, begin, end)
            out[is_short] = _span_hashes(cps, starts[short], starts[short] + lengths[short])
            hashes = out
        else:
            hashes = _span_hashes(cps, begin, end)
        return fmix64(hashes ^ _U64(0x5700 + n)), counts


def shingles(texts: Sequence[str], kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, counts) of the `kind` ("char" | "word") n-grams of normalised texts."""
    if kind == "char":
        return char_shingles(texts, n)
    if kind == "word":
        return word_shingles(texts, n)
    raise ValueError(f"unknown shingle kind {kind!r} (expected 'char' or 'word')")


def shingles_of_code_points(cps: np.ndarray, lengths: np.ndarray, kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`shingles` of a (code points, lengths) batch from `normalise_batch`."""
    if kind == "char":
        return char_shingles_of_code_points(cps, lengths, n)
    return shingles(texts_of(cps, lengths), kind, n)


def sorted_sets(hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's sorted unique 32-bit shingle hashes (the high bits of `hashes`, which
    hold `counts[i]` hashes of document i in order), flat, with offsets: document i's set is
    `values[offsets[i]:offsets[i + 1]]`. What exact Jaccard and n-gram overlap compare.

    One sort of (document, hash) keys for the whole batch, no Python loop per document.
    """
    n_docs = len(counts)
    keyed = np.repeat(np.arange(n_docs, dtype=np.uint64) << _U64(32), counts) | (hashes >> _U64(32))
    keyed.sort()
    keyed = keyed[np.concatenate(([True], keyed[1:] != keyed[:-1]))] if len(keyed) else keyed
    doc = (keyed >> _U64(32)).astype(np.int64)
    values = (keyed & _U64(0xFFFFFFFF)).astype(np.uint32)
    offsets = np.concatenate(([0], np.cumsum(np.bincount(doc, minlength=n_docs)))).astype(np.int64)
    return values, offsets


def shingle_sets(texts: Sequence[str], kind: str, n: int) -> list[np.ndarray]:
    """Sorted unique 32-bit shingle hashes of each text (for exact Jaccard)."""
    values, offsets = sorted_sets(*shingles(texts, kind, n))
    return [values[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)
