"""`synth.rows.records`, the stages' per-row view of a batch, gives what pandas'
`to_dict("records")` gives, for the dtypes Ray hands over (Arrow-backed) and plain ones."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa

from synth.rows import records


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and (a == b if not hasattr(a, "__len__") or isinstance(a, (str, list, dict)) else True)


def _check(frame: pd.DataFrame) -> None:
    expected, got = frame.to_dict("records"), records(frame)
    assert len(got) == len(expected)
    for want, have in zip(expected, got):
        assert list(want) == list(have)
        for key in want:
            assert _same(want[key], have[key]), (key, want[key], have[key])


def test_arrow_backed_columns_as_ray_hands_them_over():
    table = pa.table({
        "text": pa.array(["问题", None, "回答"], pa.large_string()),
        "n": pa.array([1, None, 3], pa.int64()),
        "score": pa.array([0.5, None, 1.5]),
        "flag": pa.array([True, None, False]),
        "elements": pa.array([{"behavior": "a", "region": None}, None, {"behavior": "c", "region": "r"}]),
        "tags": pa.array([["x"], None, []], pa.list_(pa.string())),
    })
    _check(table.to_pandas(types_mapper=pd.ArrowDtype))


def test_numpy_and_masked_columns():
    _check(pd.DataFrame({
        "s": ["a", None, "c"], "f": [1.0, float("nan"), 2.0], "i": [1, 2, 3],
        "masked": pd.array([1, None, 3], dtype="Int64"), "string": pd.array(["x", None, "z"], dtype="string"),
        "bool": pd.array([True, None, False], dtype="boolean"),
    }))


def test_empty_frames():
    assert records(pd.DataFrame({"a": pd.Series([], dtype=object)})) == []
    assert records(pd.DataFrame(index=range(2))) == pd.DataFrame(index=range(2)).to_dict("records") == [{}, {}]
