"""Annotate's batch functions, called without Ray: each judge adds its verdict column, then
one pass applies the build's rule (agree → label, disagree → hard pool, failed → reject,
transient failure → pending)."""

from __future__ import annotations

import json

import pandas as pd

from synth.engines.base import PENDING, failure_reason, transient
from synth.rows import REJECT_COLUMN
from synth.scoring import DISAGREE
from synth.stages.labelling import LABELLED_COLUMNS, PAIR_COLUMNS, combine_judgements, record_judgement


def pairs(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        row = {c: "" for c in PAIR_COLUMNS} | {"turns": 1}
        row.update(id=f"p{i}", question=f"问题{i}？", response=f"回答{i}。", seed=100 + i, finish_reason="stop",
                   response_tokens=5, elements={"behavior": "b"})
        rows.append(row)
    return pd.DataFrame(rows)


def answered(batch: pd.DataFrame, judge: str, texts: list[str], errors: list[str]) -> pd.DataFrame:
    """What the engine hands back for one judge: the pair's columns (seed, finish_reason and a
    conversation's history carried as pair_*), the request's own columns and the results."""
    out = batch.rename(columns={"seed": "pair_seed", "finish_reason": "pair_finish_reason", "history": "pair_history"})
    return out.assign(request_id=[f"{i}-{judge}" for i in batch["id"]], role=judge, task="judge", system="",
                      prompt="判断：", history="", seed=7, json_schema="{}", temperature=0.0, top_p=1.0, top_k=0, max_tokens=64,
                      stop=[[] for _ in texts], prompt_style="chat", text=texts, finish_reason="stop",
                      prompt_tokens=3, completion_tokens=4, error=errors, top_logprobs=0, logprobs="")


def verdict(label: str) -> str:
    return json.dumps({"答案": label, "分析": f"理由：{label}"}, ensure_ascii=False)


def test_two_judges_combine_by_the_builds_rule():
    batch = pairs(5)
    a = ["安全", "不安全", "安全", "安全", "安全"]
    b = ["安全", "不安全", "不安全", None, "坏"]
    first = record_judgement(answered(batch, "judge-a", [verdict(x) for x in a], [""] * 5), 0)
    assert list(first["seed"]) == list(batch["seed"])  # the pair's own seed is restored
    assert "request_id" not in first.columns and "pair_seed" not in first.columns
    errors = ["", "", "", transient("HTTP 503 from http://x after 2 attempts"), ""]
    texts = [verdict(x) if x and x != "坏" else ("not json" if x else "") for x in b]
    second = record_judgement(answered(first, "judge-b", texts, errors), 1)
    out = combine_judgements(second, judges=2)
    assert list(out.columns) == list(LABELLED_COLUMNS)
    assert list(out["label"]) == ["安全", "不安全", "有争议", "", ""]  # a disagreement: the controversial tier
    assert list(out["controversy"]) == ["", "", DISAGREE, "", ""]
    assert out["analyze"][2] == ""  # no label, no analysis of its own: both verdicts are in judgements
    assert [j["verdict"] for j in out["judgements"][2]] == ["安全", "不安全"]
    reasons = list(out[REJECT_COLUMN])
    assert reasons[:3] == ["", "", ""]
    assert reasons[3].startswith(PENDING) and "HTTP 503" in reasons[3]
    assert reasons[4].startswith("judge_failed: ")
    assert out["analyze"][0] == "理由：安全"
    assert [j["judge"] for j in out["judgements"][1]] == ["judge-a", "judge-b"]


def test_failure_reason_tells_transient_from_permanent():
    assert failure_reason(transient("HTTP 429")).startswith(PENDING)
    assert failure_reason("HTTP 400 from x: context too long") == "llm_error: HTTP 400 from x: context too long"
