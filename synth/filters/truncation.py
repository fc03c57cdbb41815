"""Cut-off outputs: the model hit its token limit, or a quote or bracket is left open."""

from __future__ import annotations

from typing import Any

from synth.filters.base import KEEP, Drop, Filter, Verdict
from synth.filters.chinese import TERMINAL

# opener, closer, reason
PAIRS = (
    ("“", "”", "quotes"), ("‘", "’", "quotes"), ("「", "」", "quotes"), ("『", "』", "quotes"),
    ("（", "）", "brackets"), ("(", ")", "brackets"), ("【", "】", "brackets"), ("[", "]", "brackets"),
    ("《", "》", "brackets"), ("〈", "〉", "brackets"), ("{", "}", "brackets"),
)
ON_LENGTH = ("drop", "drop_unless_complete", "keep")


def unclosed(text: str) -> str:
    """'quotes' / 'brackets' if some opener has no closer after it (the text was cut inside it), else ''.

    Only openers left open count: a stray closer ("1）" as a list marker) is common
    in good text. Straight double quotes count as unbalanced when their number is odd.
    """
    for opener, closer, kind in PAIRS:
        depth = 0
        for ch in text:
            if ch == opener:
                depth += 1
            elif ch == closer and depth:
                depth -= 1
        if depth:
            return kind
    if text.count('"') % 2:
        return "quotes"
    return ""


def ends_complete(text: str) -> bool:
    return text.rstrip().endswith(TERMINAL)


class Truncation(Filter):
    """Drop outputs that were cut off.

    `finish_field`: the column with the engine's finish reason ("length" = the
    token limit was hit): `finish_reason` for responses, `gen_finish_reason` for
    questions (the generator's whole list). `on_length`: "drop" every such row;
    "drop_unless_complete" keeps a row whose text still ends at a sentence end
    (a question list cut after its last complete item); "keep" ignores the finish
    reason. `brackets`: also drop text that leaves a quote or bracket open.
    """

    name = "truncation"

    def __init__(self, field: str = "response", finish_field: str | None = "finish_reason",
                 on_length: str = "drop", brackets: bool = True):
        if on_length not in ON_LENGTH:
            raise ValueError(f"on_length must be one of {ON_LENGTH}, got {on_length!r}")
        self.field, self.finish_field, self.on_length, self.brackets = field, finish_field, on_length, bool(brackets)

    def check(self, row: dict[str, Any]) -> Verdict:
        text = str(row.get(self.field) or "").strip()
        finish = str(row.get(self.finish_field) or "") if self.finish_field else ""
        if finish == "length" and self.on_length != "keep":
            if self.on_length == "drop" or not ends_complete(text):
                return Drop("truncated")
        if self.brackets:
            kind = unclosed(text)
            if kind:
                return Drop(f"unbalanced_{kind}")
        return KEEP
