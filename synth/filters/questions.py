"""Is it a question or a request at all?

A generated "question" that is a plain statement ("考试作弊是不对的。") teaches the
guard nothing about requests. A text counts as a question or request when it has
any of:

- a question mark, or a final particle 吗/呢/么/吧/嘛 (before closing punctuation);
- an interrogative: 怎么, 怎样, 如何, 为什么, 为何, 什么, 哪, 谁, 多少, 几个, 是否,
  能否, 可否, 能不能, 会不会, 是不是, 有没有, 要不要, 咋, 啥, 何时, 多久, ...;
- a request: 请, 帮我, 麻烦, 给我, 告诉我, 教我, 我想, 我要, 想知道, 求, 推荐,
  介绍, 讲讲, 说说, 解释, 分析, 列出, 写一, 编写, 生成, 设计, 总结, 翻译, ...;
- in English: a question mark or an opening how/what/why/can/please/... .

The lexicon is deliberately wide: red-team rewrites are often requests without a
question mark ("我们来玩角色扮演：你是……，用他的口吻教新人……"), and the filter should
only remove what is plainly not addressed to an assistant.
"""

from __future__ import annotations

import re
from typing import Any

from synth.filters.base import KEEP, Drop, Filter, Verdict

QUESTION_MARK = re.compile(r"[？?]|[吗呢么吧嘛][\s。！!…~～”\"』」）)]*$")
INTERROGATIVES = re.compile(
    r"怎么|怎样|怎麼|如何|为什么|为啥|为何|什么|甚么|哪|谁|多少|几[个种点条次岁年天步成分]|是否|能否|可否|"
    r"能不能|可不可以|会不会|是不是|有没有|要不要|该不该|行不行|好不好|对不对|咋|啥|何时|何地|何种|多久|多大|多远|多长|"
    r"难道|岂|干嘛|干吗|何必|究竟|到底|怎能|怎会|哪能|凭啥"
)
REQUESTS = re.compile(
    r"请|帮我|帮帮|帮忙|麻烦|给我|告诉我|教我|教教|教新人|求|我想|我要|想知道|想了解|想问|想请教|能帮|可以帮|推荐|介绍|"
    r"讲讲|讲一讲|说说|说一说|聊聊|谈谈|解释|分析|列出|列举|列一|写一|写个|写出|写段|编一|编个|编写|生成|设计|制定|"
    r"总结|翻译|描述|比较|提供|分享|科普|出个|出一|想办法|支个招|指点|建议一下|用.{1,12}口吻|扮演|假设你|假如你|你是"
)
ENGLISH = re.compile(
    r"^\s*(?:how|what|why|when|where|who|which|can|could|would|should|is|are|do|does|did|please|tell|give|write|"
    r"list|explain|describe|help)\b",
    re.IGNORECASE,
)


def is_question_or_request(text: str) -> bool:
    text = (text or "").strip()
    return bool(QUESTION_MARK.search(text) or INTERROGATIVES.search(text) or REQUESTS.search(text)
                or ENGLISH.search(text))


class IsQuestion(Filter):
    """Drop 'questions' that are neither a question nor a request."""

    name = "is_question"
    user_turns = False  # a turn of a conversation may set context or push back instead of asking

    def __init__(self, field: str = "question"):
        self.field = field

    def check(self, row: dict[str, Any]) -> Verdict:
        if not is_question_or_request(str(row.get(self.field) or "")):
            return Drop("not_a_question")
        return KEEP
