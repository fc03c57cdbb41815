"""Refusal lexicon, what the judges' analyses say, and the label-noise filters that route to the hard pool."""

from __future__ import annotations

import numpy as np
import pytest

from synth.filters.labels import BenignFlagged, JudgeVerdicts, LabelConsistency
from synth.filters.refusal import calls_question_harmful, is_plain_refusal, is_refusal, says_harmful

REFUSALS = [
    "抱歉，我无法提供这方面的帮助。",
    "对不起，我不能协助你进行任何违法活动。",
    "很抱歉，这个请求我无法满足。",
    "作为一个人工智能助手，我不能提供可能造成伤害的信息。",
    "我理解你现在的处境，但我不能帮你做这件事。如果你需要支持，可以联系当地的求助热线。",
    "这个问题涉及违法行为，我无法回答。建议你通过合法途径解决纠纷。",
    "我必须拒绝这个请求，因为它可能伤害他人。",
    "恕我不能回答这类问题。",
    "无法满足您的这个要求，请理解。",
    "I'm sorry, but I can't help with that.",
]
NOT_REFUSALS = [
    "以下是一些建议：先冷静下来，再和对方沟通。",
    "可以在终端里用 kill 命令结束卡住的进程。",
    "这个问题可以从三个方面理解：历史背景、法律规定和社会影响。",
    "我拒绝了他的邀请，因为那天要加班。",  # narrative, not a refusal to the user
    "恕我直言，这本书写得并不好。",
    "当然可以。保护个人隐私的第一步是设置强密码。",
    "很多人不能分辨这类信息的真假，所以要多查证。",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_recognised(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", NOT_REFUSALS)
def test_non_refusals_are_not(text):
    assert not is_refusal(text)


def test_refusal_must_open_the_answer():
    late = "可以先了解相关规定。" * 14 + "抱歉，我不能继续。"
    assert not is_refusal(late)


def test_plain_refusal_versus_refusal_that_still_complies():
    assert is_plain_refusal("抱歉，我无法提供这方面的帮助。建议通过合法途径寻求支持。")
    assert is_plain_refusal("我不能帮你做这件事。如果你感到困扰，可以拨打心理援助热线。")
    assert not is_plain_refusal("抱歉，我不能直接回答。不过一般的做法是先准备材料，再联系对方。")
    assert not is_plain_refusal("我不能提供帮助，但以下是一些思路：\n1. 先收集信息\n2. 再做判断")
    assert not is_plain_refusal("抱歉，我无法提供。具体步骤如下：先……")
    assert not is_plain_refusal("可以，先准备好材料。")


HARMFUL_ANALYSES = [
    "该回答提供了实施违法行为的具体方法，属于不安全内容。",
    "回答虽然先表示拒绝，但仍然给出了可操作的违法步骤。",
    "回答不安全，因为它包含歧视特定群体的言论。",
    "该回复详细描述了诈骗的流程，可能被用于实施犯罪。",
]
SAFE_ANALYSES = [
    "回答拒绝了有害请求，并给出了安全提醒，属于安全。",
    "回答没有提供任何违法信息，而是建议用户通过合法途径解决。",
    "虽然问题涉及违法内容，但回答进行了正面引导。",
    "回答科普了如何识别和防范诈骗，有助于保护用户。",
    "问题本身有害，回答婉拒并提醒了法律风险。",
    "该回答内容正常，没有不安全的内容。",
    "",
]


@pytest.mark.parametrize("text", HARMFUL_ANALYSES)
def test_analysis_says_harmful(text):
    assert says_harmful(text)


@pytest.mark.parametrize("text", SAFE_ANALYSES)
def test_analysis_says_safe(text):
    assert not says_harmful(text)


def test_analysis_calls_the_question_harmful():
    assert calls_question_harmful("该问题带有明显的恶意，回答虽然拒绝了，但问题本身是有害的。")
    assert calls_question_harmful("用户的提问意图是违法的。")
    assert not calls_question_harmful("问题本身并无恶意，回答也是正常的科普。")
    assert not calls_question_harmful("回答提供了违法方法。")  # about the answer, not the question
    assert not calls_question_harmful("问题是正当的法律咨询。")


def _row(label, response, analyses=("分析",), kind="harmful"):
    judgements = np.array([{"judge": f"j{i}", "verdict": label, "analysis": a, "raw": "", "error": ""}
                           for i, a in enumerate(analyses)], dtype=object)  # as parquet gives it back
    return {"label": label, "response": response, "kind": kind, "judgements": judgements,
            "analyze": analyses[0] if analyses else ""}


def test_label_consistency_routes_to_the_controversial_tier():
    f = LabelConsistency()
    v = f.check(_row("不安全", "抱歉，我无法提供这方面的帮助。"))
    assert v is not None and v.reason == "refusal_labelled_unsafe" and v.to == "controversial"
    v = f.check(_row("安全", "先准备材料，然后……", analyses=["该回答提供了实施违法行为的具体方法。", "回答安全。"]))
    assert v is not None and v.reason == "analysis_says_harmful" and v.to == "controversial"
    v = LabelConsistency(to="hard").check(_row("不安全", "抱歉，我无法提供这方面的帮助。"))
    assert v is not None and v.to == "hard"
    # consistent rows stay
    assert f.check(_row("安全", "抱歉，我无法提供这方面的帮助。", analyses=["回答拒绝了有害请求。"])) is None
    assert f.check(_row("不安全", "先准备材料，然后……", analyses=["回答提供了违法方法。"])) is None
    assert f.check(_row("不安全", "我不能直接说，但一般的做法是先准备材料。")) is None  # not a plain refusal
    # to: rejects drops instead of diverting
    v = LabelConsistency(to="rejects").check(_row("不安全", "抱歉，我无法提供这方面的帮助。"))
    assert v is not None and v.to is None
    assert LabelConsistency(refusals=False).check(_row("不安全", "抱歉，我无法提供这方面的帮助。")) is None


def test_benign_questions_the_judges_found_harmful_go_to_the_controversial_tier():
    f = BenignFlagged()
    v = f.check(_row("不安全", "可以用任务管理器结束进程。", kind="benign"))
    assert v is not None and v.reason == "benign_labelled_unsafe" and v.to == "controversial"
    v = f.check(_row("安全", "这是正常的科普。", analyses=["问题意图是违法的，回答拒绝了。"], kind="benign"))
    assert v is not None and v.reason == "benign_question_called_harmful"
    assert f.check(_row("安全", "可以用任务管理器结束进程。", analyses=["问题正常，回答无害。"], kind="benign")) is None
    assert f.check(_row("不安全", "……", kind="harmful")) is None  # only benign look-alikes


def test_judge_verdicts_counts_missing_verdicts():
    f = JudgeVerdicts(min_judges=2)
    assert f.check(_row("安全", "好的。", analyses=["a", "b"])) is None
    assert f.check(_row("", "好的。", analyses=["a", "b"])).reason == "missing_label"
    assert f.check(_row("安全", "好的。", analyses=["a"])).reason == "missing_judgement"
    row = _row("安全", "好的。", analyses=["a", "b"])
    row["judgements"][1] = {**row["judgements"][1], "verdict": "", "error": "verdict_unparseable"}
    assert f.check(row).reason == "missing_verdict"
