"""Parsing what models write: question lists, single rewritten questions, verdicts.

Every parser returns a value or a reason it could not; none raises on model
output, because malformed output is data to count, not a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# "1." "1、" "1)" "（1）" "第1个" "-" "*" "•" "Q1:" "问题1：" at the start of a line
_ITEM_PREFIX = re.compile(
    r"^\s*(?:"
    r"(?:第?\s*\d{1,3}\s*(?:[.．、)）:：]|个[：:、]?))"
    r"|[（(]\s*\d{1,3}\s*[)）]"
    r"|[-*•·●▪]"
    r"|(?:Q|问题)\s*\d{0,3}\s*[:：.、]"
    r")\s*"
)
_PREAMBLE = re.compile(r"(以下是|下面是|好的|当然|这里是|如下)")
_MIN_QUESTION_CHARS = 4


@dataclass(frozen=True)
class Parsed:
    items: list[str]
    reason: str = ""  # non-empty when nothing usable was found


def parse_question_list(text: str, limit: int, *, continues_list_at: int | None = None) -> Parsed:
    """Questions from a numbered or bulleted list with stray text around it.

    `continues_list_at`: for completion prompts that end with "3." the model's
    first line is item 3 without its number; it is kept as a question.
    """
    if not text or not text.strip():
        return Parsed([], "empty_output")
    questions: list[str] = []
    seen: set[str] = set()
    lines = text.replace("\r", "").split("\n")
    for index, line in enumerate(lines):
        stripped = line.strip()
        match = _ITEM_PREFIX.match(stripped)
        if match:
            body = stripped[match.end() :]
        elif index == 0 and continues_list_at is not None:
            body = stripped
        else:
            continue
        body = body.strip().strip("\"“”'「」")
        if len(body) < _MIN_QUESTION_CHARS or _PREAMBLE.match(body) and body.endswith(("：", ":")):
            continue
        if body not in seen:
            seen.add(body)
            questions.append(body)
        if len(questions) >= limit:
            break
    if not questions:
        return Parsed([], "no_list_items")
    return Parsed(questions)


_OPEN_ITEM = re.compile(r"(\d{1,3})\s*[.．、]\s*$")


def list_item_stops(prompt: str, limit: int, *, continues_list: bool) -> list[str]:
    """Stop strings that end a numbered list once it holds the `limit` items we keep.

    The stage keeps at most `limit` questions per output, so tokens written after
    them are paid for and thrown away (and a cut-off last item is dropped as
    truncated). A completion prompt that ends with "3." is continued from item 3;
    a chat answer numbers from 1. Stops only at a line opening the next item, so a
    model that numbers differently just runs to its other limits, as before.
    """
    first = 1
    if continues_list:
        match = _OPEN_ITEM.search(prompt)
        if match is None:
            return []
        first = int(match.group(1))
    after = first + limit
    return [f"\n{after}{mark}" for mark in (".", "．", "、")]


def parse_single_question(text: str) -> Parsed:
    """One rewritten question: the first substantial line, list markers and labels removed."""
    if not text or not text.strip():
        return Parsed([], "empty_output")
    for line in text.replace("\r", "").split("\n"):
        body = _ITEM_PREFIX.sub("", line.strip(), count=1)
        body = re.sub(r"^(改写|重写|新问题|问题|改写后)\s*[:：]\s*", "", body).strip().strip("\"“”'「」")
        if len(body) >= _MIN_QUESTION_CHARS:
            return Parsed([body])
    return Parsed([], "no_question_found")


LABELS = ("安全", "不安全")


@dataclass(frozen=True)
class Verdict:
    label: str  # "安全" | "不安全" | "" when unparseable
    analysis: str
    reason: str = ""


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)
_Q = "[\"'“”‘’]?"  # a quote, ASCII or full-width, or none (damaged or Python-style JSON)
_LABEL_FIELD = re.compile(rf"{_Q}答案{_Q}\s*[:：]\s*{_Q}\s*(不安全|安全)")
_ANALYSIS_FIELD = re.compile(rf"{_Q}分析{_Q}\s*[:：]\s*{_Q}(.*?){_Q}\s*[,，]?\s*}}?\s*$", re.DOTALL)
_REASONING = re.compile(r"^.*</think>", re.DOTALL)  # reasoning models think before the verdict
_LABEL_NOISE = " \t\n。.!！,，"


def parse_verdict(text: str, *, prefix: str = "") -> Verdict:
    """The guard verdict `{"答案": ..., "分析": ...}`, tolerating code fences and minor damage.

    `prefix` is what the prompt already wrote of the JSON (completion-style judges
    are prompted with `{"答案": "` and continue from there).
    """
    raw = _REASONING.sub("", prefix + (text or "")).strip()
    if not raw:
        return Verdict("", "", "empty_output")
    cleaned = _FENCE.sub("", raw).strip()
    start, end = cleaned.find("{"), cleaned.rfind("}")
    if start != -1 and end > start:
        try:
            data = json.loads(cleaned[start : end + 1])
            label = str(data.get("答案", "")).strip(_LABEL_NOISE)
            if label in LABELS:
                return Verdict(label, str(data.get("分析", "")).strip())
            return Verdict("", "", "verdict_missing_or_invalid")
        except (json.JSONDecodeError, AttributeError):
            pass
    match = _LABEL_FIELD.search(cleaned)
    if match:
        analysis = _ANALYSIS_FIELD.search(cleaned[match.end() :])
        return Verdict(match.group(1), analysis.group(1).strip() if analysis else "")
    return Verdict("", "", "verdict_unparseable")
