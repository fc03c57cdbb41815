"""Judges that score, and the rule that turns scores into labels.

A judge's verdict carries `unsafe_score`, the probability that the answer is unsafe,
read from the model's token log-probabilities at the verdict (`score_from_logprobs`):
at the first generated token that reaches into the value of "答案", the probability
mass of the alternatives that continue with 不 (不安全) against those that continue with
安 (安全). Under structured output vLLM masks the logits with the grammar before it
computes log-probabilities (its default `logprobs_mode`, raw_logprobs, reads the masked
logits), so the alternatives there are exactly the two labels and the score is
P(不安全 | the judge must say one of the two). Where the endpoint gives no log-probabilities,
the score is the label itself (1.0 / 0.0) and `score_source` says `label`.

Engines return log-probabilities in one engine-independent form, the result column
`logprobs`: JSON, one entry per generated token, `[token_text, [[alternative_text,
logprob], ...]]` (the alternatives include the token itself); "" when none were asked
for or given.

The rule (`label`): each judge's own side is 不安全 above `t_unsafe`, 安全 below `t_safe`.
Judges on opposite sides (unless `judges_agree` is off), or (with `margin`) further apart
than the margin, disagree: the controversial tier. Otherwise the combined score (mean by default) decides: above
`t_unsafe` 不安全, below `t_safe` 安全, in between the controversial tier. With 0.5/0.5, no
margin and greedy judges (score > 0.5 exactly when the verdict is 不安全) this is the old
rule: both agree → that label, they disagree → 有争议.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from synth.output_parsing import CONTROVERSIAL, SAFE, UNSAFE

# How a verdict's score was obtained.
FROM_LOGPROBS = "logprobs"
FROM_LABEL = "label"  # the endpoint gave no log-probabilities: the score is the label (0/1)
# Reasons a pair is in the controversial tier (column `controversy`).
DISAGREE = "judges_disagree"
BETWEEN = "score_between_thresholds"
COMBINE = ("mean", "min", "max")
# How many alternatives per generated token a scoring judge asks for (vLLM `logprobs`,
# OpenAI `top_logprobs`). Under the grammar only the two labels are allowed at the verdict.
TOP_LOGPROBS = 5

_VALUE_START = re.compile(r'"答案"\s*:\s*"')


def combine(scores: Sequence[float], how: str = "mean", weights: Sequence[float] | None = None) -> float:
    """The judges' combined score: their (weighted) mean, or the min or max of those weighted above 0."""
    weights = list(weights) if weights is not None else [1.0] * len(scores)
    if how == "mean":
        return sum(w * s for w, s in zip(weights, scores)) / sum(weights)
    voting = [s for w, s in zip(weights, scores) if w > 0]
    if how == "min":
        return min(voting)
    if how == "max":
        return max(voting)
    raise ValueError(f"unknown combine {how!r} (one of {', '.join(COMBINE)})")


def side(score: float, t_safe: float, t_unsafe: float) -> str:
    """One score's side of the thresholds: 不安全, 安全, or '' in between."""
    if score > t_unsafe:
        return UNSAFE
    if score < t_safe:
        return SAFE
    return ""


def label(scores: Sequence[float], t_safe: float = 0.5, t_unsafe: float = 0.5, margin: float | None = None,
          how: str = "mean", weights: Sequence[float] | None = None, judges_agree: bool = True) -> tuple[str, str]:
    """(label, controversy) for one pair's judge scores (see the module docstring); `weights`:
    per judge (default equal), a judge of weight 0 takes no part; `judges_agree` False: judges
    on opposite sides do not make a pair controversial by themselves."""
    voting = [s for w, s in zip(weights, scores) if w > 0] if weights is not None else list(scores)
    sides = {side(s, t_safe, t_unsafe) for s in voting} - {""} if judges_agree else set()
    if len(sides) > 1 or (margin is not None and max(voting) - min(voting) > margin):
        return CONTROVERSIAL, DISAGREE
    decided = side(combine(scores, how, weights), t_safe, t_unsafe)
    return (decided, "") if decided else (CONTROVERSIAL, BETWEEN)


def label_score(verdict: str) -> float:
    """The score of a verdict without log-probabilities: the label itself."""
    return 1.0 if verdict == UNSAFE else 0.0


def score_from_logprobs(text: str, logprobs: str, prefix: str = "", key: str = "答案",
                        labels: tuple[str, str] = (UNSAFE, SAFE)) -> float | None:
    """P(不安全) at the verdict of a judge's output `text` (see the module docstring), or None
    when the log-probabilities do not reach the verdict or do not spell out the text.
    `prefix`: the part of the JSON that was in the prompt (completion-style judges). `key` and
    `labels` (positive, negative): another verdict read the same way, e.g. a question judge's
    P(是) at "问题有害" (the two labels must differ in their first character)."""
    if not logprobs:
        return None
    try:
        tokens = json.loads(logprobs)
    except ValueError:
        return None
    found = _value_start(key).search(prefix + text)
    if not found or found.end() < len(prefix):
        return None
    offset = found.end() - len(prefix)  # where the label starts in `text`
    entry = _token_at(tokens, text, offset)
    if entry is None:
        return None
    (token, alternatives), before = entry  # `before`: characters of the token before the label starts
    positive, negative = labels[0][0], labels[1][0]
    yes = no = 0.0
    for alternative, logprob in alternatives:
        alternative = str(alternative)
        if alternative[:before] != token[:before]:
            continue
        rest = alternative[before:]
        if rest.startswith(positive):
            yes += math.exp(logprob)
        elif rest.startswith(negative):
            no += math.exp(logprob)
    return yes / (yes + no) if yes + no > 0 else None


def _value_start(key: str) -> re.Pattern[str]:
    return _VALUE_START if key == "答案" else re.compile(rf'"{re.escape(key)}"\s*:\s*"')


def _token_at(tokens: list, text: str, offset: int) -> tuple[tuple[str, list], int] | None:
    """The generated token covering character `offset` of `text` and how far into it the offset
    is. Tokens are matched to the text from its start, or else from its end: a character split
    over byte-level tokens decodes to neither half, and the verdict sits near the end."""
    position = 0
    for token, alternatives in tokens:
        token = str(token)
        if text[position:position + len(token)] != token:
            break
        if position + len(token) > offset:
            return (token, alternatives), offset - position
        position += len(token)
    end = len(text)
    for token, alternatives in reversed(tokens):
        token = str(token)
        start = end - len(token)
        if start < 0 or text[start:end] != token:
            return None
        if start <= offset < end:
            return (token, alternatives), offset - start
        end = start
    return None


def verdict_score(verdict: str, text: str, logprobs: str, prefix: str = "", key: str = "答案",
                  labels: tuple[str, str] = (UNSAFE, SAFE)) -> tuple[float, str]:
    """(unsafe_score, score_source) of a parsed verdict: from the log-probabilities where they
    reach it, else the label's 0/1. A greedy judge's score sits on its verdict's side of 0.5;
    where the read disagrees with the label written (a sampled judge), the label wins.
    `key`, `labels`: as score_from_logprobs (the score is then P(labels[0]))."""
    score = score_from_logprobs(text, logprobs, prefix, key, labels)
    if score is None or (score > 0.5) != (verdict == labels[0]) and score != 0.5:
        return (1.0 if verdict == labels[0] else 0.0), FROM_LABEL
    return round(score, 6), FROM_LOGPROBS


def compact_logprobs(entries: Sequence[tuple[str, Sequence[tuple[str, float]]]]) -> str:
    """The engine-independent `logprobs` result column (see the module docstring)."""
    if not entries:
        return ""
    return json.dumps([[t, [[a, round(float(lp), 5)] for a, lp in alts]] for t, alts in entries],
                      ensure_ascii=False)


def from_openai(content: list[dict[str, Any]] | None) -> str:
    """OpenAI-compatible `choices[0].logprobs.content` → the `logprobs` column."""
    if not content:
        return ""
    return compact_logprobs([(c.get("token", ""), [(a.get("token", ""), a.get("logprob", -math.inf))
                                                   for a in (c.get("top_logprobs") or [])]
                              or [(c.get("token", ""), c.get("logprob", 0.0))]) for c in content])
