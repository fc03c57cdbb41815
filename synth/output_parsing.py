"""Parsing what models write: question lists, single rewritten questions, verdicts.

Every parser returns a value or a reason it could not; none raises on model
output, because malformed output is data to count, not a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

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


def parse_user_turn(text: str) -> Parsed:
    """A conversation's next user turn (stage converse): the first non-empty line, a speaker
    label (用户：) and quotes removed; a line that is the assistant's (助手：) ends it."""
    if not text or not text.strip():
        return Parsed([], "empty_output")
    for line in text.replace("\r", "").split("\n"):
        body = line.strip()
        if re.match(r"^(助手|AI助手|assistant)\s*[:：]", body, re.IGNORECASE):
            break
        body = re.sub(r"^(用户|user)\s*[:：]\s*", "", body, flags=re.IGNORECASE).strip().strip("\"“”'「」")
        if body:
            return Parsed([body])
    return Parsed([], "no_user_turn_found")


LABELS = ("安全", "不安全")
SAFE, UNSAFE = LABELS
# The controversial tier: pairs the judges disagree on, and agreed labels the label checks
# doubt (synth/filters/labels.py). Kept beside the agreed corpus, each judge's verdict in
# `judgements`; the export's `strict` view counts them 不安全, its `loose` view 安全.
CONTROVERSIAL = "有争议"
CORPUS_LABELS = (*LABELS, CONTROVERSIAL)

# Optional judge fields (config `annotate.fields`), in the order they follow 答案 in the
# verdict JSON: the config name, the JSON key the judge writes, and the pair's column.
# question_harmful and refusal are answered 是/否 (True/False in the columns); subcategory
# with one of the catalog's subcategory ids.
JUDGE_FIELDS = ("question_harmful", "refusal", "subcategory")
FIELD_KEYS = {"question_harmful": "问题有害", "refusal": "拒答", "subcategory": "子类"}
FIELD_COLUMNS = {"question_harmful": "question_harmful", "refusal": "refusal", "subcategory": "judged_subcategory"}
YES_NO = ("是", "否")
FIELD_MISSING = "judge_field_missing"
FIELD_MALFORMED = "judge_field_malformed"


def ordered_fields(fields: Collection[str]) -> list[str]:
    """The requested fields in schema order (the order in the config does not matter)."""
    return [f for f in JUDGE_FIELDS if f in fields]


def field_column_value(name: str, value: str) -> bool | str:
    """A judge's field value as the pair's column holds it."""
    return value == YES_NO[0] if name != "subcategory" else value


@dataclass(frozen=True)
class Verdict:
    label: str  # "安全" | "不安全" | "" when unparseable
    analysis: str
    reason: str = ""
    fields: dict[str, str] = field(default_factory=dict)  # requested field -> value as written (是/否, an id)


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)
_Q = "[\"'“”‘’]?"  # a quote, ASCII or full-width, or none (damaged or Python-style JSON)
_LABEL_FIELD = re.compile(rf"{_Q}答案{_Q}\s*[:：]\s*{_Q}\s*(不安全|安全)")
_ANALYSIS_FIELD = re.compile(rf"{_Q}分析{_Q}\s*[:：]\s*{_Q}(.*?){_Q}\s*[,，]?\s*}}?\s*$", re.DOTALL)
_REASONING = re.compile(r"^.*</think>", re.DOTALL)  # reasoning models think before the verdict
_LABEL_NOISE = " \t\n。.!！,，"


def parse_verdict(text: str, *, prefix: str = "", fields: Sequence[str] = (),
                  subcategories: Collection[str] = ()) -> Verdict:
    """The guard verdict `{"答案": ..., "分析": ...}`, tolerating code fences and minor damage.

    `prefix` is what the prompt already wrote of the JSON (completion-style judges
    are prompted with `{"答案": "` and continue from there). `fields` are the optional
    judge fields asked for (JUDGE_FIELDS); each must be present and valid (a subcategory
    one of `subcategories`), else the verdict keeps its label and says which field failed
    (`judge_field_missing:<field>` / `judge_field_malformed:<field>`).
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
                return _with_fields(Verdict(label, str(data.get("分析", "")).strip()), fields, subcategories,
                                    {k: data[k] for k in FIELD_KEYS.values() if k in data})
            return Verdict("", "", "verdict_missing_or_invalid")
        except (json.JSONDecodeError, AttributeError):
            pass
    match = _LABEL_FIELD.search(cleaned)
    if match:
        analysis = _ANALYSIS_FIELD.search(cleaned[match.end() :])
        written = {}
        for name in fields:
            found = _field_pattern(FIELD_KEYS[name]).search(cleaned)
            if found:
                written[FIELD_KEYS[name]] = found.group(1)
        # the analysis field runs to the end of the text: the fields written after it are not part of it
        text_analysis = analysis.group(1).strip() if analysis else ""
        if fields and text_analysis:
            text_analysis = _FIELDS_AFTER.split(text_analysis)[0].strip()
        return _with_fields(Verdict(match.group(1), text_analysis), fields, subcategories, written)
    return Verdict("", "", "verdict_unparseable")


_FIELDS_AFTER = re.compile(rf"{_Q}\s*[,，]\s*{_Q}(?:{'|'.join(FIELD_KEYS.values())})")


def _field_pattern(key: str) -> re.Pattern[str]:
    return re.compile(rf"{_Q}{key}{_Q}\s*[:：]\s*{_Q}\s*([^\"'“”‘’,，}}\s]*)")


def _with_fields(verdict: Verdict, fields: Sequence[str], subcategories: Collection[str],
                 written: dict[str, object]) -> Verdict:
    """The verdict with its requested fields, or a reason naming the first missing or malformed one."""
    values: dict[str, str] = {}
    for name in fields:
        key = FIELD_KEYS[name]
        if key not in written:
            return Verdict(verdict.label, verdict.analysis, f"{FIELD_MISSING}:{name}")
        value = written[key]
        value = value.strip(_LABEL_NOISE) if isinstance(value, str) else value
        allowed = subcategories if name == "subcategory" else YES_NO
        if not isinstance(value, str) or value not in allowed:
            return Verdict(verdict.label, verdict.analysis, f"{FIELD_MALFORMED}:{name}")
        values[name] = value
    return Verdict(verdict.label, verdict.analysis, fields=values)


# The question judge (synth/stages/question_judge.py, templates/shared/question_judge.yaml):
# {"分析": a reason, "问题有害": 是/否, "子类": a subcategory id or `other`}, read with the pair
# judges' field keys and written to the same columns (FIELD_COLUMNS).
QUESTION_FIELDS = ("question_harmful", "subcategory")
OTHER_SUBCATEGORY = "other"  # a question about none of the catalog's subcategories
OTHER_TOPIC = "都不是"  # what the question judge writes for `other` (it names subcategories as 场景-子类)
_REASON_FIELD = re.compile(rf"{_Q}分析{_Q}\s*[:：]\s*{_Q}(.*?){_Q}\s*[,，]\s*{_Q}(?:{'|'.join(FIELD_KEYS.values())})",
                           re.DOTALL)


def parse_question_verdict(text: str, *, prefix: str = "", subcategories: Collection[str] = ()) -> Verdict:
    """A question judge's verdict: `label` 是/否 (the question is harmful), `analysis` its reason,
    `fields` {"question_harmful": 是/否, "subcategory": one of `subcategories` (ids, or the
    catalog's topic labels 场景-子类), `other` or 都不是}; a reason when the JSON
    has no valid 问题有害 (`verdict_missing_or_invalid`), or no valid 子类 (`judge_field_*:subcategory`).
    Tolerates code fences, reasoning before the JSON and damaged JSON, as parse_verdict does."""
    raw = _REASONING.sub("", prefix + (text or "")).strip()
    if not raw:
        return Verdict("", "", "empty_output")
    cleaned = _FENCE.sub("", raw).strip()
    start, end = cleaned.find("{"), cleaned.rfind("}")
    written: dict[str, object] | None = None
    analysis = ""
    if start != -1 and end > start:
        try:
            data = json.loads(cleaned[start: end + 1])
            if isinstance(data, dict):
                written = {k: data[k] for k in FIELD_KEYS.values() if k in data}
                analysis = str(data.get("分析", "")).strip()
        except json.JSONDecodeError:
            pass
    if written is None:
        written = {}
        for name in QUESTION_FIELDS:
            found = _field_pattern(FIELD_KEYS[name]).search(cleaned)
            if found:
                written[FIELD_KEYS[name]] = found.group(1)
        reason = _REASON_FIELD.search(cleaned)
        analysis = reason.group(1).strip() if reason else ""
    harmful = written.get(FIELD_KEYS["question_harmful"])
    harmful = harmful.strip(_LABEL_NOISE) if isinstance(harmful, str) else harmful
    if harmful not in YES_NO:
        return Verdict("", "", "verdict_missing_or_invalid" if written else "verdict_unparseable")
    verdict = _with_fields(Verdict(harmful, analysis), QUESTION_FIELDS,
                           [*subcategories, OTHER_SUBCATEGORY, OTHER_TOPIC], written)
    return verdict
