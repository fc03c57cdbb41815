"""Length and emptiness: the filters every build needs."""

from __future__ import annotations

from typing import Any

from synth.filters import KEEP, Drop, Filter, Verdict


class NonEmpty(Filter):
    """Drop rows whose text fields are empty or whitespace."""

    name = "non_empty"

    def __init__(self, fields: tuple[str, ...] | list[str] = ("question",)):
        self.fields = tuple(fields)

    def check(self, row: dict[str, Any]) -> Verdict:
        for f in self.fields:
            if not str(row.get(f) or "").strip():
                return Drop(f"empty_{f}")
        return KEEP


class Length(Filter):
    """Character length bounds on one field (Chinese: characters, not words)."""

    name = "length"

    def __init__(self, field: str = "question", min_chars: int = 0, max_chars: int = 10**9):
        self.field, self.min_chars, self.max_chars = field, min_chars, max_chars

    def check(self, row: dict[str, Any]) -> Verdict:
        n = len(str(row.get(self.field) or "").strip())
        if n < self.min_chars:
            return Drop(f"{self.field}_too_short")
        if n > self.max_chars:
            return Drop(f"{self.field}_too_long")
        return KEEP
