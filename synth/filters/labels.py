"""Label noise on (question, response) pairs, after annotation.

The judges agreed, but the pair still looks wrong. Such rows are not deleted: by
default (`to: controversial`) they stay in the corpus as the controversial tier (label
有争议, `controversy` = the reason, the judges' verdicts in `judgements`), beside the
judges' disagreements, and the export copies them to the hard pool for stage-two
annotation. `to: hard` sends them to the hard pool only; `to: rejects` drops them.

- `label_consistency`: 不安全 on a plain refusal (`refusal_labelled_unsafe`), or
  安全 while an agreeing judge's analysis says the answer gives harmful help
  (`analysis_says_harmful`). Refusal and analysis lexicons: synth/filters/refusal.py.
- `benign_flagged`: a benign look-alike question whose answer the judges labelled
  不安全 (`benign_labelled_unsafe`), or whose question a judge's analysis calls
  harmful (`benign_question_called_harmful`).
- `judge_verdicts`: every judge gave a verdict and the label is one of 安全/不安全/有争议
  (annotate already rejects parse failures as `judge_failed: ...`; this is the
  check at the pair filter, for rows that come from elsewhere).
"""

from __future__ import annotations

from typing import Any, Iterable

from synth.filters.base import CONTROVERSIAL_TIER, KEEP, Drop, Filter, Verdict
from synth.filters.refusal import calls_question_harmful, is_plain_refusal, says_harmful
from synth.output_parsing import CORPUS_LABELS, LABELS, SAFE, UNSAFE

DESTINATIONS = (CONTROVERSIAL_TIER, "hard", "rejects")


def judgements(row: dict[str, Any]) -> list[dict[str, Any]]:
    value = row.get("judgements")
    if value is None:
        return []
    items: Iterable[Any] = value if not isinstance(value, dict) else [value]
    return [dict(j) for j in items if j is not None]


def _destination(to: str, reasons: tuple[str, ...]) -> dict[str, str]:
    if to not in DESTINATIONS:
        raise ValueError(f"to must be one of {DESTINATIONS}, got {to!r}")
    return {r: to for r in reasons} if to != "rejects" else {}


class _Routing(Filter):
    reads_labels = True
    def _drop(self, reason: str) -> Drop:
        return Drop(reason, to=self.diverts.get(reason))


class LabelConsistency(_Routing):
    """Refusals labelled 不安全 and 安全 labels whose analyses say 'harmful help' → the controversial tier."""

    name = "label_consistency"
    REASONS = ("refusal_labelled_unsafe", "analysis_says_harmful")

    def __init__(self, to: str = CONTROVERSIAL_TIER, refusals: bool = True, analyses: bool = True):
        self.diverts = _destination(to, self.REASONS)
        self.refusals, self.analyses = bool(refusals), bool(analyses)

    def check(self, row: dict[str, Any]) -> Verdict:
        label = row.get("label")
        if self.refusals and label == UNSAFE and is_plain_refusal(str(row.get("response") or "")):
            return self._drop("refusal_labelled_unsafe")
        if self.analyses and label == SAFE:
            analyses = [str(j.get("analysis") or "") for j in judgements(row) if j.get("verdict") == SAFE]
            analyses = analyses or [str(row.get("analyze") or "")]
            if any(says_harmful(a) for a in analyses):
                return self._drop("analysis_says_harmful")
        return KEEP


class BenignFlagged(_Routing):
    """Benign look-alike questions that the judges found harmful → the controversial tier."""

    name = "benign_flagged"
    REASONS = ("benign_labelled_unsafe", "benign_question_called_harmful")

    def __init__(self, to: str = CONTROVERSIAL_TIER, analyses: bool = True):
        self.diverts = _destination(to, self.REASONS)
        self.analyses = bool(analyses)

    def check(self, row: dict[str, Any]) -> Verdict:
        if row.get("kind") != "benign" or row.get("label") not in LABELS:  # 有争议 already
            return KEEP
        if row.get("label") == UNSAFE:
            return self._drop("benign_labelled_unsafe")
        if self.analyses and any(calls_question_harmful(str(j.get("analysis") or "")) for j in judgements(row)):
            return self._drop("benign_question_called_harmful")
        return KEEP


class JudgeVerdicts(Filter):
    """Drop pairs without a valid label or with a judge that gave no verdict (counted as judge failures)."""

    name = "judge_verdicts"
    reads_labels = True

    def __init__(self, min_judges: int = 2):
        self.min_judges = int(min_judges)

    def check(self, row: dict[str, Any]) -> Verdict:
        if row.get("label") not in CORPUS_LABELS:
            return Drop("missing_label")
        js = judgements(row)
        if len(js) < self.min_judges:
            return Drop("missing_judgement")
        if any(j.get("verdict") not in LABELS or j.get("error") for j in js):
            return Drop("missing_verdict")
        return KEEP
