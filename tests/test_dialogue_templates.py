"""Dialogue strategies and the dialogue judge prompt (templates/shared/dialogue.yaml,
dialogue_judge.yaml; synth/dialogue_templates.py): the shipped files load through the catalog
and render; bad input is refused with exit 2, naming file:line. No model, no Ray."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synth.dialogue_templates import DIALOGUE_JUDGE_VARIABLES, DIALOGUE_VARIABLES, plan_variables
from synth.errors import BadInput
from synth.output_parsing import FIELD_KEYS, JUDGE_FIELDS
from synth.templates import JUDGE_VARIABLES, load_catalog, scenario_vars

HARMFUL = {"escalation", "context_pivot", "role_play_buildup", "pushback", "split_request"}


@pytest.fixture()
def tree(tmp_path: Path, repo_root: Path) -> Path:
    """A private copy of templates/ and seeds/ to break."""
    shutil.copytree(repo_root / "templates", tmp_path / "templates")
    shutil.copytree(repo_root / "seeds", tmp_path / "seeds")
    return tmp_path


def dialogue_file(tree: Path) -> Path:
    return tree / "templates" / "shared" / "dialogue.yaml"


def line_of(lines: list[str], text: str, after: int = 0) -> int:
    """1-based number of the first line at or after index `after` that starts with `text` (stripped)."""
    for i in range(after, len(lines)):
        if lines[i].strip().startswith(text):
            return i + 1
    raise AssertionError(f"no line starts with {text!r}")


def refused(tree: Path) -> str:
    with pytest.raises(BadInput) as info:
        load_catalog(tree / "templates", tree / "seeds")
    return str(info.value)


# -- the shipped files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(repo_root: Path):
    return load_catalog(repo_root / "templates", repo_root / "seeds")


def test_shipped_strategies(catalog):
    dialogue = catalog.dialogue
    assert dialogue is not None
    assert {s.id for s in dialogue.of_kind("harmful")} == HARMFUL
    assert len(dialogue.of_kind("benign")) >= 2
    for strategy in dialogue.strategies:
        low, high = strategy.turns
        assert 1 <= low <= high <= 8, strategy.id
        assert strategy.plan.chat.user.strip() and strategy.plan.completion.strip()
    assert set(DIALOGUE_VARIABLES) == {"scenario", "subcategory", "behavior", "benign_topic", "turn", "turns",
                                       "history", "strategy"}
    assert {"templates/shared/dialogue", "templates/shared/dialogue_judge"} <= set(catalog.hashes)
    assert pickle.loads(pickle.dumps(catalog)).dialogue.strategy("pushback").turns == dialogue.strategy("pushback").turns


@pytest.mark.parametrize("strategy_id", ["escalation", "pushback", "concerned_follow_up"])
def test_plan_renders_turn_and_history_in_both_styles(catalog, strategy_id: str):
    dialogue = catalog.dialogue
    strategy = dialogue.strategy(strategy_id)
    scenario = catalog.scenarios["illegal_activities"]
    sub = scenario.template.subcategories[0]
    pools = scenario.pools.behaviors if strategy.kind == "harmful" else scenario.pools.benign_topics
    history = [{"role": "user", "content": "第一轮的用户发言XYZ"}, {"role": "assistant", "content": "第一轮的助手回答QRS"}]
    variables = plan_variables(strategy, scenario=scenario_vars(scenario.template), subcategory=sub.model_dump(),
                               target=pools[sub.id][0], turn=2, turns=strategy.turns[1], history=history)
    chat = dialogue.render_plan(catalog, strategy, "chat", variables)
    completion = dialogue.render_plan(catalog, strategy, "completion", variables)
    assert chat.system
    for prompt in (chat.prompt, completion.prompt):
        assert "第一轮的用户发言XYZ" in prompt and "第一轮的助手回答QRS" in prompt
    assert "第2轮" in chat.prompt
    assert pools[sub.id][0] in chat.prompt + completion.prompt
    if strategy.kind == "harmful":
        assert "第2轮" in completion.prompt
    # a base model continues the transcript with the user's next turn
    assert completion.prompt.endswith("助手：第一轮的助手回答QRS\n用户：")


def test_plan_variables_refuse_an_inconsistent_turn(catalog):
    strategy = catalog.dialogue.strategy("escalation")
    common = {"scenario": {}, "subcategory": {}, "target": "x"}
    with pytest.raises(ValueError):
        plan_variables(strategy, **common, turn=2, turns=strategy.turns[1], history=[])  # history of turn 1 missing
    with pytest.raises(ValueError):
        plan_variables(strategy, **common, turn=1, turns=strategy.turns[1] + 1, history=[])  # outside its range


def test_dialogue_judge_labels_the_last_answer(catalog):
    assert DIALOGUE_JUDGE_VARIABLES == tuple("messages" if v == "question" else v
                                             for v in JUDGE_VARIABLES if v != "response")
    messages = [{"role": "user", "content": "问题一"}, {"role": "assistant", "content": "回答一"},
                {"role": "user", "content": "问题二"}, {"role": "assistant", "content": "最后的回答"}]
    fields = catalog.judge_fields(list(JUDGE_FIELDS))
    for style in ("chat", "completion"):
        plain = catalog.dialogue.render_judge(catalog, style, {"messages": messages, "rubric": catalog.rubric(None).model_dump(),
                                                               "fields": [], "examples": []}).prompt
        assert "问题一" in plain and "待判断）：最后的回答" in plain
        assert '"答案"' in plain and '"分析"' in plain
        assert not any(f'"{key}"' in plain for key in FIELD_KEYS.values())
        full = catalog.dialogue.render_judge(catalog, style, {"messages": messages, "rubric": catalog.rubric(None).model_dump(),
                                                              "fields": fields, "examples": []}).prompt
        assert all(f'"{key}"' in full for key in FIELD_KEYS.values())
    assert plain.endswith('{"答案": "')  # the completion form ends inside the JSON, like judge.yaml's
    with pytest.raises(ValueError):
        catalog.dialogue.render_judge(catalog, "chat", {"messages": messages[:-1], "rubric": {}, "fields": [],
                                                        "examples": []})


def test_a_strategy_added_with_yaml_only(tree: Path):
    path = dialogue_file(tree)
    path.write_text(path.read_text(encoding="utf-8") + """
  - id: team_new
    kind: benign
    name_zh: 新策略
    description: 一位学生为了写作业追问。
    turns: [1, 2]
    plan:
      chat:
        user: "话题：{{ benign_topic }}，第{{ turn }}/{{ turns }}轮。{% for m in history %}{{ m.content }}{% endfor %}"
      completion: "{% for m in history %}{{ m.content }}\\n{% endfor %}用户："
""", encoding="utf-8")
    catalog = load_catalog(tree / "templates", tree / "seeds")
    assert catalog.dialogue.strategy("team_new").turns == (1, 2)


# -- bad input: BadInput naming file:line ---------------------------------------------------


def test_strategy_without_a_plan(tree: Path):
    path = dialogue_file(tree)
    lines = path.read_text(encoding="utf-8").split("\n")
    start = line_of(lines, "- id: victim_help")  # the last strategy: its plan runs to the end of the file
    plan = line_of(lines, "plan:", after=start)
    path.write_text("\n".join(lines[: plan - 1]) + "\n", encoding="utf-8")
    message = refused(tree)
    assert f"dialogue.yaml:{start}: strategies[victim_help].plan: Field required" in message


def test_turn_range_outside_1_to_8(tree: Path):
    path = dialogue_file(tree)
    lines = path.read_text(encoding="utf-8").split("\n")
    turns = line_of(lines, "turns:", after=line_of(lines, "- id: split_request"))
    lines[turns - 1] = "    turns: [0, 9]"
    path.write_text("\n".join(lines), encoding="utf-8")
    message = refused(tree)
    assert f"dialogue.yaml:{turns}: strategies[split_request].turns: turn range [0, 9] is outside 1–8" in message

    # the CLI: exit 2, file:line on stderr
    result = subprocess.run(
        [sys.executable, "-m", "synth.cli", "templates", "validate", str(tree / "templates"),
         "--seeds", str(tree / "seeds")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"dialogue.yaml:{turns}: strategies[split_request].turns" in result.stderr


@pytest.mark.parametrize("strategy, key, where, variable", [
    ("pushback", "user: |-", "plan.chat.user", "secret"),  # a variable no template is given
    ("escalation", "completion: |-", "plan.completion", "benign_topic"),  # the other kind's seed
], ids=["undefined-variable", "seed-of-the-other-kind"])
def test_plan_prompt_with_a_variable_it_may_not_use(tree: Path, strategy: str, key: str, where: str, variable: str):
    path = dialogue_file(tree)
    lines = path.read_text(encoding="utf-8").split("\n")
    line = line_of(lines, key, after=line_of(lines, f"- id: {strategy}"))
    lines[line] += "{{ %s }}" % variable  # the first line of that prompt
    path.write_text("\n".join(lines), encoding="utf-8")
    message = refused(tree)
    assert f"dialogue.yaml:{line}: strategies[{strategy}].{where}" in message
    assert variable in message


def test_duplicate_id_and_missing_kind(tree: Path):
    path = dialogue_file(tree)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    second = line_of(lines, "- id: context_pivot")
    path.write_text(text.replace("- id: context_pivot", "- id: escalation"), encoding="utf-8")
    assert f"dialogue.yaml:{second}: strategies[escalation].id: duplicate strategy id 'escalation'" in refused(tree)

    path.write_text(text.replace("kind: benign", "kind: harmful"), encoding="utf-8")
    assert f"dialogue.yaml:{line_of(lines, 'strategies:')}: strategies: no benign strategy" in refused(tree)


def test_dialogue_judge_with_an_undefined_variable(tree: Path):
    path = tree / "templates" / "shared" / "dialogue_judge.yaml"
    lines = path.read_text(encoding="utf-8").split("\n")
    completion = line_of(lines, "completion: |-")
    lines[completion] += "{{ question }}"  # the pair judge's variable, not the dialogue judge's
    path.write_text("\n".join(lines), encoding="utf-8")
    message = refused(tree)
    assert f"dialogue_judge.yaml:{completion}: completion" in message and "question" in message
