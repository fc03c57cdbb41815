"""Row identity, the reject convention shared by every stage, and a pair row's conversation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from synth.engines.base import parse_history

# A stage returns one dataset; rows whose REJECT_COLUMN is non-empty are written
# to the stage's rejects with that reason instead of its output. One column, one
# place: stages never drop rows themselves.
REJECT_COLUMN = "reject_reason"

# A conversation (stage converse, synth/stages/dialogue.py) is a row like a single question:
# its last user turn is `question` (its answer, `response`), and these columns say the rest.
# strategy: the dialogue strategy's id ("" for a single question); turns: the user turns (1 for
# a single question); history: the messages before the last user turn, a JSON list of
# {"role": "user" | "assistant", "content"} ("" for none; synth.engines.base.parse_history reads
# it); history_responder: the responder role that answered the earlier turns ("" for none).
DIALOGUE_COLUMNS = ("strategy", "turns", "history", "history_responder")
SINGLE_TURN = {"strategy": "", "turns": 1, "history": "", "history_responder": ""}
DIALOGUE_DTYPES = {"turns": "int64"}


def stable_id(*parts: Any) -> str:
    """A 16-hex id from what made the row (same inputs → same id, on any machine)."""
    payload = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def columns(*groups) -> list[str]:
    """Column names of several groups in order, each once (request columns overlap row columns)."""
    out: list[str] = []
    for group in groups:
        for name in ([group] if isinstance(group, str) else group):
            if name not in out:
                out.append(name)
    return out


def to_arrow(frame):
    """A pandas frame as an Arrow table without pandas metadata.

    Ray hands batches over with Arrow-backed pandas dtypes (struct<...>[pyarrow]);
    pandas metadata naming such dtypes cannot be read back by plain `to_pandas`.
    """
    import pyarrow as pa

    return pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False).replace_schema_metadata(None)


def records(frame) -> list[dict[str, Any]]:
    """A pandas frame's rows as dicts: what `frame.to_dict("records")` gives (the same values and
    types), ~10x faster on the Arrow-backed columns Ray hands over, which `to_dict` (and
    `Series.tolist`) read one boxed element at a time: here each such column converts at once."""
    import pandas as pd

    names = list(frame.columns)
    if not names:
        return [{} for _ in range(len(frame))]
    values = []
    for name in names:
        column = frame[name]
        dtype = column.dtype
        if isinstance(dtype, pd.ArrowDtype) and not pa.types.is_temporal(dtype.pyarrow_dtype):
            values.append(pa.array(column.array).to_pylist())  # a null as None, as to_dict gives it
        elif getattr(dtype, "na_value", None) is pd.NA:  # masked dtypes (Int64, string): NA as None too
            values.append([None if v is pd.NA else v for v in column.tolist()])
        else:
            values.append(column.tolist())
    return [dict(zip(names, row)) for row in zip(*values)]


# A conversation in OpenAI chat form, as parquet stores it (corpus/ `messages`, sft/ `messages`):
# the same type in every file, also an empty one.
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def row_messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """A pair row's whole conversation, each {"role", "content"}: the messages before the last user
    turn (`history`, issue 31's dialogue rows; none for a single-turn row or a row written before
    the column existed), then the last user turn (`question`) and the answer the label judges
    (`response`). A single-turn row is a one-turn conversation of two messages."""
    return [*parse_history(row.get("history")), {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["response"]}]
