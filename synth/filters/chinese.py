"""Measurements of Chinese text that the filters and the build report share.

Chinese has no spaces, so everything here counts characters, not words:
Han characters, letters, character n-grams, lines and sentences split at
Chinese and ASCII sentence punctuation. The functions are pure and cheap
(one pass over a short text); the filters call them once per row.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

# CJK Unified Ideographs, Extension A and the compatibility block: what a reader calls 汉字.
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN_WORD = re.compile(r"[A-Za-z]+")
# Sentence ends: 。！？； and their ASCII forms, the ellipsis, and line breaks.
SENTENCE_END = re.compile(r"(?<=[。！？!?；;…])|\n")
TERMINAL = tuple("。！？!?…；;.～~）)」』”\"》】")


def is_han(ch: str) -> bool:
    return bool(HAN.match(ch))


def han_count(text: str) -> int:
    return len(HAN.findall(text))


def letter_count(text: str) -> int:
    """Characters of Unicode category L* (Han, kana, Latin, Cyrillic, ...); digits and punctuation excluded."""
    return sum(1 for ch in text if unicodedata.category(ch).startswith("L"))


def han_ratio(text: str, latin_word_as_one: bool = False) -> float | None:
    """Han characters over letters (None for text without letters).

    `latin_word_as_one`: count a run of Latin letters ("Python", "APP") as one letter,
    so that technical terms inside Chinese sentences weigh like one character.
    """
    han = han_count(text)
    letters = letter_count(text)
    if latin_word_as_one:
        latin = LATIN_WORD.findall(text)
        letters = letters - sum(len(w) for w in latin) + len(latin)
    return han / letters if letters else None


def normalise(text: str) -> str:
    """NFKC (full-width → half-width), collapsed whitespace; what repetition checks compare."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.replace("\r", "").split("\n") if ln.strip()]


def sentences(text: str) -> list[str]:
    """Sentences split after 。！？；… (and ASCII !?;) and at line breaks; empty pieces dropped."""
    return [s.strip() for s in SENTENCE_END.split(text.replace("\r", "")) if s and s.strip()]


def content_chars(text: str) -> str:
    """The letters and digits of a text, in order (punctuation and spaces removed)."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if ch.isalnum())


def char_ngrams(chars: str, n: int) -> list[str]:
    return [chars[i : i + n] for i in range(len(chars) - n + 1)]


def top_ngram_fraction(chars: str, n: int) -> float:
    """Share of characters covered by the most frequent character n-gram (Gopher's `top_n_gram`).

    The count of the top n-gram times n, over the number of characters; occurrences
    can overlap (as in Gopher). 0 when the text is shorter than n.
    """
    grams = char_ngrams(chars, n)
    if not grams:
        return 0.0
    _, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0
    return min(1.0, count * n / len(chars))


def duplicate_ngram_fraction(chars: str, n: int) -> float:
    """Share of characters inside n-grams that occur more than once (Gopher's `duplicate_n_grams`).

    Every character covered by any repeated n-gram counts once, so a text that is
    one phrase said twice scores ~0.5 + and a loop of one phrase scores ~1.
    """
    if len(chars) < n:
        return 0.0
    grams = char_ngrams(chars, n)
    counts = Counter(grams)
    if len(counts) == len(grams):  # no n-gram repeats (most texts, for n >= 5)
        return 0.0
    covered = bytearray(len(chars))
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i : i + n] = b"\x01" * n
    return sum(covered) / len(chars)


def duplicate_fraction(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier item, share of characters in those repeats).

    Items are compared and measured by their letters and digits ("一般！" == "一般！！").
    """
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        key = content_chars(item)
        total_chars += len(key)
        if key in seen:
            dup_items += 1
            dup_chars += len(key)
        else:
            seen.add(key)
    return dup_items / len(items), (dup_chars / total_chars if total_chars else 0.0)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct character n-grams over all character n-grams of the texts (distinct-1, distinct-2)."""
    total = 0
    distinct: set[str] = set()
    for text in texts:
        grams = char_ngrams(content_chars(text), n)
        total += len(grams)
        distinct.update(grams)
    return len(distinct) / total if total else 0.0
