"""Is the text Chinese? Han characters over letters."""

from __future__ import annotations

from typing import Any

from synth.filters.base import KEEP, Drop, Filter, Verdict
from synth.filters.chinese import han_ratio, letter_count


class ChineseRatio(Filter):
    """Drop a field whose share of Han characters among its letters is below `min_ratio`.

    Letters are Unicode letters (Han, Latin, kana, ...); digits, punctuation and
    spaces do not count either way. With `latin_word_as_one` (the default) a run
    of Latin letters counts as one letter, so "用Python杀死一个卡住的进程" stays
    Chinese while an English sentence with one Chinese word does not.
    `min_letters`: shorter texts are not judged (the length filter owns them).
    Set `min_ratio: 0` to keep mixed-language text, or raise it to drop it.
    """

    name = "chinese_ratio"

    def __init__(self, field: str = "question", min_ratio: float = 0.5, min_letters: int = 4,
                 latin_word_as_one: bool = True):
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
        self.field, self.min_ratio, self.min_letters = field, float(min_ratio), int(min_letters)
        self.latin_word_as_one = bool(latin_word_as_one)

    def check(self, row: dict[str, Any]) -> Verdict:
        text = str(row.get(self.field) or "")
        if letter_count(text) < self.min_letters:
            return KEEP
        ratio = han_ratio(text, latin_word_as_one=self.latin_word_as_one)
        if ratio is not None and ratio < self.min_ratio:
            return Drop(f"{self.field}_not_chinese")
        return KEEP
