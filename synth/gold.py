"""Judge gold sets: labelled (question, answer) pairs, one JSON object per line.

Read by `synth eval-judges`, `synth probe train` and the judge-example checks; the format
is in docs/judges.md. A build's reviews directory (people's labels) reads as one too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synth.eval_guard import read_gold
from synth.human_labels import review_gold

GOLD_FIELDS = ("question", "response", "label", "category_name", "sub_category_name", "id")


def read_judge_gold(path: Path) -> dict[str, dict[str, Any]]:
    """The gold pairs by id; a missing field, an unknown label, an empty text or a duplicate
    id is a `BadInput` naming the file and line. A directory is a build's reviews (BUILD/reviews,
    `synth review pull`): the rows people settled, with their label (synth.human_labels.review_gold),
    a dialogue row with its earlier turns as `history`."""
    if Path(path).is_dir():
        return review_gold(path)
    return read_gold(path, required=GOLD_FIELDS, texts=("question", "response", "category_name"))
