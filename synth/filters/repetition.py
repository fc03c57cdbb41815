"""Repetition: Gopher's repetition rules, recast for Chinese characters.

Gopher (Rae et al. 2021) drops English documents by duplicated lines and
paragraphs and by word n-gram statistics. Chinese has no spaces, so the n-grams
here are character n-grams over letters and digits (punctuation and spaces
removed), and lines are complemented by sentences (split at 。！？；…), since
model answers are often one line. The thresholds differ from Gopher's: a
Chinese character carries less than an English word, common bigrams (的是,
一个) repeat in any fluent text, and our texts are short. The defaults are the
measurements in docs/filters.md; `min_chars` keeps the n-gram rules off texts
too short for their statistics to mean anything.
"""

from __future__ import annotations

from typing import Any

from synth.filters.base import KEEP, Drop, Filter, Verdict
from synth.filters.chinese import (
    content_chars,
    duplicate_fraction,
    duplicate_ngram_fraction,
    lines,
    sentences,
    top_ngram_fraction,
)

# Defaults (docs/filters.md, "Repetition"): above the 99.9th percentile of real Chinese
# text windows of the same length, below what a looping model writes.
TOP_NGRAM = {2: 0.30, 3: 0.30, 4: 0.35}
DUP_NGRAM = {5: 0.50, 6: 0.47, 7: 0.44, 8: 0.41, 9: 0.38, 10: 0.35}


def _as_thresholds(value: dict | None, default: dict[int, float], what: str) -> dict[int, float]:
    if value is None:
        return dict(default)
    out = {}
    for k, v in value.items():
        n, t = int(k), float(v)
        if n < 1 or not 0.0 < t <= 1.0:
            raise ValueError(f"{what}: n must be >= 1 and the fraction in (0, 1], got {k}: {v}")
        out[n] = t
    return out


class Repetition(Filter):
    """Drop text that repeats itself: duplicated lines or sentences, or dominant/duplicated n-grams."""

    name = "repetition"

    def __init__(
        self,
        field: str = "response",
        max_dup_line_fraction: float = 0.30,
        max_dup_line_char_fraction: float = 0.15,
        max_dup_sentence_fraction: float = 0.30,
        max_dup_sentence_char_fraction: float = 0.15,
        top_ngram: dict | None = None,
        dup_ngram: dict | None = None,
        min_chars: int = 30,
        min_sentence_chars: int = 4,
    ):
        self.field = field
        self.max_dup_line_fraction = float(max_dup_line_fraction)
        self.max_dup_line_char_fraction = float(max_dup_line_char_fraction)
        self.max_dup_sentence_fraction = float(max_dup_sentence_fraction)
        self.max_dup_sentence_char_fraction = float(max_dup_sentence_char_fraction)
        self.top_ngram = _as_thresholds(top_ngram, TOP_NGRAM, "top_ngram")
        self.dup_ngram = _as_thresholds(dup_ngram, DUP_NGRAM, "dup_ngram")
        self.min_chars = int(min_chars)
        self.min_sentence_chars = int(min_sentence_chars)

    def check(self, row: dict[str, Any]) -> Verdict:
        text = str(row.get(self.field) or "")
        ls = lines(text)
        if len(ls) > 1:
            items, chars = duplicate_fraction(ls)
            if items > self.max_dup_line_fraction or chars > self.max_dup_line_char_fraction:
                return Drop("duplicate_lines")
        ss = [s for s in sentences(text) if len(content_chars(s)) >= self.min_sentence_chars]
        if len(ss) > 1:
            items, chars = duplicate_fraction(ss)
            if items > self.max_dup_sentence_fraction or chars > self.max_dup_sentence_char_fraction:
                return Drop("duplicate_sentences")
        chars = content_chars(text)
        if len(chars) < self.min_chars:
            return KEEP
        for n, limit in sorted(self.top_ngram.items()):
            if top_ngram_fraction(chars, n) > limit:
                return Drop(f"top_{n}gram")
        for n, limit in sorted(self.dup_ngram.items()):
            fraction = duplicate_ngram_fraction(chars, n)
            if fraction > limit:
                return Drop(f"duplicate_{n}gram")
            if fraction == 0.0:  # no n-gram repeats, so no longer one does: the rest are 0 too
                break
        return KEEP
