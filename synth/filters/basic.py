"""Length and emptiness: the filters every build needs."""

from __future__ import annotations

from typing import Any

from synth.filters.base import KEEP, Drop, Filter, Verdict
from synth.filters.chinese import content_chars

UNITS = ("chars", "content")


class NonEmpty(Filter):
    """Drop rows whose text fields are empty, whitespace, or (by default) punctuation only.

    `min_content_chars`: letters or digits a field needs to count as non-empty
    ("……", "？？" and "。" are empty outputs); 0 = only whitespace is empty.
    """

    name = "non_empty"

    def __init__(self, fields: tuple[str, ...] | list[str] = ("question",), min_content_chars: int = 1):
        self.fields = tuple(fields)
        self.min_content_chars = int(min_content_chars)

    def check(self, row: dict[str, Any]) -> Verdict:
        for f in self.fields:
            text = str(row.get(f) or "")
            if not text.strip() or len(content_chars(text)) < self.min_content_chars:
                return Drop(f"empty_{f}")
        return KEEP


class Length(Filter):
    """Character length bounds on one field (Chinese: characters, not words).

    `unit`: "chars" counts every character of the stripped text; "content" counts
    letters and digits only, so punctuation runs and spaces do not make a text long.
    """

    name = "length"

    def __init__(self, field: str = "question", min_chars: int = 0, max_chars: int = 10**9, unit: str = "chars"):
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        if min_chars > max_chars:
            raise ValueError(f"min_chars ({min_chars}) > max_chars ({max_chars})")
        self.field, self.min_chars, self.max_chars, self.unit = field, min_chars, max_chars, unit

    def check(self, row: dict[str, Any]) -> Verdict:
        text = str(row.get(self.field) or "").strip()
        n = len(content_chars(text)) if self.unit == "content" else len(text)
        if n < self.min_chars:
            return Drop(f"{self.field}_too_short")
        if n > self.max_chars:
            return Drop(f"{self.field}_too_long")
        return KEEP
