"""Chinese refusal lexicon, and what the judges' analyses say.

`is_refusal(text)`: the answer opens with a refusal. A refusal is recognised in
the opening (the first `OPENING_CHARS` characters: refusals come first; an answer
that complies and ends with "请遵守法律" is not one) by any of these patterns:

  R1 apology + inability      抱歉/对不起/很遗憾/不好意思 … (我)不能/无法/不可以/不会/没法/不便/难以
  R2 first-person inability   我/本助手/作为…AI…我 + 不能/无法/不可以/不会/不应/拒绝 + 提供/回答/帮助/协助/满足/…
  R3 cannot meet the request  无法/不能/难以 + 满足/答应/协助/配合 + (你/您的)(这个)请求/要求/需求
  R4 explicit refusal         我(必须/只能/不得不)拒绝(回答/提供/这…), 恕(我)不能/无法/难以
  R5 English                  I'm sorry / I cannot / I can't / I won't / As an AI

`is_plain_refusal(text)`: a refusal with no sign of compliance after it: no list
items, no "以下是/如下/步骤/首先…其次/具体方法", no "但/不过 … 方法/步骤/做法". A
refusal that still hands over a method is not plain, so it is never sent to the
hard pool as "refusal labelled unsafe" (the judges may be right about it).
Safe redirections ("建议你通过合法途径寻求帮助", "可以拨打心理援助热线") stay plain.

`says_harmful(analysis)`: a judge's analysis states that the *answer* gives
harmful help, clause by clause (split at ，。；！？): a clause counts when it holds
"不安全", or a harm term (有害, 违法, 歧视, 隐私, ...) together with a help term
(提供, 给出, 包含, 教, 鼓励, ...), and it holds no negation or protection cue
(没有, 未, 拒绝, 避免, 并非, 保护, 防范, 合法, ...) and is not about the question only
(mentions 问题/提问/用户 but not 回答/回复/内容). `calls_question_harmful(analysis)` is
the converse: a clause that calls the *question* harmful, with no negation cue.

All of it is a heuristic for routing rows to the hard pool (for re-annotation),
never for deleting them; the tests in tests/test_filters_refusal.py pin it down.
"""

from __future__ import annotations

import re

OPENING_CHARS = 120

_INABILITY = r"(?:不能|无法|不可以|不会|没法|没有办法|不便|不宜|难以|恕难|不应该?|不打算|不被允许)"
_ACTS = (
    r"(?:提供|回答|解答|帮助|协助|帮忙|满足|支持|参与|给出|告诉|告知|生成|编写|撰写|写|透露|讨论|分享|教|推荐|鼓励|"
    r"从事|进行|回应|响应|处理|执行|配合|指导|列出|描述|解释|详细说明|为此|就此|这样做|照做)"
)
_TO_YOU = r"(?:为你|为您|帮你|帮您|向你|向您|给你|给您|替你|替您)?"
REFUSAL_PATTERNS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"(?:抱歉|对不起|很遗憾|不好意思|非常抱歉|十分抱歉)[^。！？!?]{0,12}?" + _INABILITY,
    r"(?:我|本助手|作为[^，。！？]{0,16}?(?:AI|人工智能|助手|模型)[，,]?\s*我)(?:是|真的|实在|目前|暂时)?"
    + r"(?:不能|无法|不可以|不会|没法|没有办法|不便|不宜|不应该?|不打算|拒绝)(?:" + _TO_YOU + _ACTS + r"|帮你|帮您|替你|替您)",
    r"(?:无法|不能|难以|不便)" + _TO_YOU + r"(?:满足|答应|协助|配合|回应|响应|完成)(?:你|您)?的?(?:这[个种类项])?(?:请求|要求|需求|问题)",
    r"(?:我|本助手)(?:必须|只能|不得不|要)?(?:拒绝|婉拒)(?!了)(?=回答|提供|协助|帮助|这|此|你|您|[，,。！!]|$)",
    r"(?:请)?恕(?:我)?(?:不能|无法|难以)",
    r"\b(?:I'?m sorry|I am sorry|I apologi[sz]e|I can(?:no|')t|I won'?t|I am unable|I'm unable|As an AI)\b",
))
COMPLIANCE_PATTERNS = tuple(re.compile(p) for p in (
    r"(?:^|\n)\s*(?:\d{1,2}\s*[.．、)）](?!\d)|[（(]\d{1,2}[)）]|[-*•]\s)",
    r"(?:以下是|如下[：:]|方法如下|步骤如下|第一步|步骤[一二三1-9]|首先[，,][^。]*(?:其次|然后|接着)|具体(?:的)?(?:步骤|方法|做法|操作|流程))",
    r"(?:但是?|不过|然而|只是)[^。！？!?]{0,30}?(?:方法|步骤|做法|办法|技巧|流程|配方|教程)",
))

HARM_TERMS = (
    "有害", "违法", "非法", "犯罪", "危险", "危害", "伤害", "不当", "歧视", "侮辱", "辱骂", "仇恨", "暴力", "色情",
    "赌博", "诈骗", "欺诈", "谣言", "虚假", "隐私", "侵权", "自残", "自杀", "毒品", "恶意", "攻击", "偏见",
)
HELP_TERMS = (
    "提供", "给出", "包含", "含有", "描述", "教", "指导", "协助", "帮助", "鼓励", "支持", "宣扬", "传播", "煽动",
    "认同", "助长", "美化", "详细", "具体", "可操作", "实质", "列出", "介绍了", "说明了", "建议",
)
NEGATION_CUES = (
    "没有", "没提供", "并未", "未提供", "未给出", "未包含", "未涉及", "未出现", "并无", "毫无", "无任何", "无害",
    "不存在", "不包含", "不含", "不涉及", "不构成", "不会", "不是", "并非", "而非", "拒绝", "避免", "防止", "防范",
    "预防", "杜绝", "制止", "劝阻", "反对", "否认", "警示", "警告", "提醒", "谴责", "保护", "识别", "举报", "求助",
    "应对", "远离", "合法", "正当", "正确", "正面", "积极", "科普",
)
ANSWER_WORDS = ("回答", "回复", "答复", "该回应", "内容", "助手", "模型", "输出")
QUESTION_WORDS = ("问题", "提问", "用户", "请求", "问句")
QUESTION_HARM = ("有害", "违法", "非法", "恶意", "不当", "危险", "敏感", "不安全", "犯罪", "歧视", "攻击")
_CLAUSE = re.compile(r"[，,。；;！!？?\n]")


def opening(text: str) -> str:
    return (text or "").strip()[:OPENING_CHARS]


def is_refusal(text: str) -> bool:
    head = opening(text)
    return any(p.search(head) for p in REFUSAL_PATTERNS)


def complies(text: str) -> bool:
    return any(p.search(text or "") for p in COMPLIANCE_PATTERNS)


def is_plain_refusal(text: str) -> bool:
    return is_refusal(text) and not complies(text)


def clauses(text: str) -> list[str]:
    return [c.strip() for c in _CLAUSE.split(text or "") if c.strip()]


def _negated(clause: str) -> bool:
    return any(cue in clause for cue in NEGATION_CUES)


def says_harmful(analysis: str) -> bool:
    """The analysis says the answer gives harmful help or is unsafe (see module docstring)."""
    for clause in clauses(analysis):
        about_question_only = any(w in clause for w in QUESTION_WORDS) and not any(w in clause for w in ANSWER_WORDS)
        if about_question_only or _negated(clause):
            continue
        if "不安全" in clause:
            return True
        if any(h in clause for h in HARM_TERMS) and any(h in clause for h in HELP_TERMS):
            return True
    return False


def calls_question_harmful(analysis: str) -> bool:
    """The analysis calls the question itself harmful (for benign questions: the judges disagree with 'benign')."""
    for clause in clauses(analysis):
        if not any(w in clause for w in QUESTION_WORDS):
            continue
        if _negated(clause):
            continue
        if any(h in clause for h in QUESTION_HARM):
            return True
    return False
