"""Prompt leakage and meta-answers: the output talks about the task instead of doing it.

- `prompt_leakage`: the text repeats our instructions (template phrases such as
  "细分类别：" or "只输出问题列表"), carries role tags ("用户：", "助手：",
  "<start_of_turn>"), holds a second list item ("……？2. ……": two questions fused
  on one line), or (responses) merely echoes the question.
- `meta_answer` (questions): the generator's preamble or refusal instead of a
  question ("以下是10个问题：", "作为一个AI语言模型，我不能……", "希望这些问题对你有帮助").

The default phrase list is taken from our templates (templates/*.yaml and
templates/shared/*.yaml): phrases that belong to the instructions and would not
occur in a user's question or an assistant's answer. It is measured against real
Chinese text in docs/filters.md (no hit in ~60k reviews and news paragraphs).
Projects with other templates pass their own `phrases`.
"""

from __future__ import annotations

import re
from typing import Any

from synth.filters.base import KEEP, Drop, Filter, Verdict
from synth.filters.chinese import char_ngrams, content_chars
from synth.filters.refusal import is_refusal

TEMPLATE_PHRASES = (
    # question generation (harmful / benign chat and completion prompts)
    "风险场景：", "场景说明：", "细分类别：", "有害行为：", "任务类型：", "国家/地区：", "特定事件：", "参考话题：",
    "需要区分的有害行为", "输出格式：", "只输出问题", "每行一个问题", "问题列表", "只写问题", "不要回答，也不要解释",
    "以真实用户的口吻", "明显有害的中文提问", "看起来有风险", "看似敏感、实则安全", "对照问题", "对照数据",
    "红队评测", "红队测试专家", "安全护栏模型", "护栏模型", "中文安全评测集", "有害提问（", "意图完全正当的中文提问",
    # augmentation
    "原问题：", "改写：", "改写后的问题", "保留原问题的核心意图", "写成一行", "手法改写",
    # respond / judge
    "以下是一段用户与AI助手的对话", "文本安全专家", "判定标准", "请以JSON格式回答", "\"答案\"", "“答案”：",
)
# A role tag at a line start, or a chat-template token anywhere.
ROLE_TAG = re.compile(
    r"(?:^|\n)\s*(?:用户|助手|系统|人类|AI助手|User|Assistant|System|Human)\s*[：:]"
    r"|<\|?(?:im_start|im_end|start_of_turn|end_of_turn|eot_id|start_header_id|endoftext)\|?>"
    r"|\[/?INST\]|<</?SYS>>",
    re.IGNORECASE,
)
# A list item after the first sentence: "……？2. ……", "……。(3) ……", "……\n4、……".
# Numbers 2-19 only: a fused list continues at 2; "（1）" opening an enumeration is common prose.
INLINE_ITEM = re.compile(
    r"[？?。！!；;\n]\s*(?:(?:[2-9]|1\d)\s*[.．、)）](?!\d)|[（(](?:[2-9]|1\d)[)）]|第\s*(?:[2-9]|1\d)\s*个[：:、])\s*\S"
)


class PromptLeakage(Filter):
    """Drop text that leaks the prompt: template phrases, role tags, fused list items, echoes."""

    name = "prompt_leakage"

    def __init__(self, field: str = "question", phrases: list[str] | None = None, role_tags: bool = True,
                 list_numbering: bool = True, echo_of: str | None = None, max_echo: float = 0.8,
                 echo_min_chars: int = 8):
        self.field = field
        self.phrases = tuple(TEMPLATE_PHRASES if phrases is None else phrases)
        self.role_tags, self.list_numbering = bool(role_tags), bool(list_numbering)
        self.echo_of, self.max_echo, self.echo_min_chars = echo_of, float(max_echo), int(echo_min_chars)

    def check(self, row: dict[str, Any]) -> Verdict:
        text = str(row.get(self.field) or "")
        if any(p in text for p in self.phrases):
            return Drop("template_phrase")
        if self.role_tags and ROLE_TAG.search(text):
            return Drop("role_tag")
        if self.list_numbering and INLINE_ITEM.search(text):
            return Drop("list_numbering")
        if self.echo_of and echo_share(text, str(row.get(self.echo_of) or ""), self.echo_min_chars) > self.max_echo:
            return Drop(f"echoes_{self.echo_of}")
        return KEEP


def echo_share(text: str, source: str, min_chars: int = 8) -> float:
    """Share of the text's character trigrams that occur in `source` (0 for short texts)."""
    chars = content_chars(text)
    if len(chars) < min_chars:
        return 0.0
    grams = char_ngrams(chars, 3)
    if not grams:
        return 0.0
    known = set(char_ngrams(content_chars(source), 3))
    return sum(g in known for g in grams) / len(grams)


META_PATTERNS = (
    # preambles and closings of a question list
    r"^(?:好的|当然可以|没问题|根据(?:您|你)的(?:要求|需求))[，,。！!：:]",
    r"^(?:以下|下面|这里|如下)(?:是|为)[^？?]*[：:]$",
    r"(?:以下|下面|如下)(?:是|为|列出了?|给出了?)?[^，。？?]{0,12}?(?:\d+|[二三四五六七八九十两几]+)\s*(?:个|条|道)[^，。？?]{0,8}?(?:问题|提问|示例|例子)",
    r"(?:希望|但愿)(?:这些|以上)(?:问题|示例|内容)",
    r"(?:这些|以上|上述)(?:问题|提问|示例)(?:旨在|可以|能够|仅供|仅用于|都|涵盖|可用于)",
    r"^(?:注意|注|说明|备注|提示)\s*[：:]",
    # the generator speaking as an AI
    r"作为(?:一个|一名|一款)?(?:AI|人工智能)(?:语言模型|助手|模型)?[，,]?\s*我",
    r"我是(?:一个|一名|一款)?(?:AI|人工智能)(?:语言模型|助手|模型)",
)


class MetaAnswer(Filter):
    """Drop 'questions' that are the generator's preamble, closing remark, AI self-talk or refusal."""

    name = "meta_answer"

    def __init__(self, field: str = "question", patterns: list[str] | None = None, refusals: bool = True):
        self.field = field
        self.patterns = [re.compile(p, re.IGNORECASE) for p in (META_PATTERNS if patterns is None else patterns)]
        self.refusals = bool(refusals)

    def check(self, row: dict[str, Any]) -> Verdict:
        text = str(row.get(self.field) or "").strip()
        if any(p.search(text) for p in self.patterns):
            return Drop("meta_answer")
        if self.refusals and is_refusal(text):
            return Drop("generator_refusal")
        return KEEP
