"""Conversations (issue 31): the converse stage in a real build, resumed after a SIGKILL in
turn 3, the judges labelling every answer (annotate.every_turn), and the logic on the
deterministic stand-in engine.

The builds are `synth build --dry-run` subprocesses (the stand-in engine, deterministic, so a
resumed build must equal an uninterrupted one byte for byte) of the demo config with every
scenario, one call per subcategory and kind, dialogues on and annotate.every_turn.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import datasets
import pandas as pd
import pytest
import yaml

from synth.engines.base import parse_history
from synth.errors import BadInput
from synth.export import read_table
from synth.output_parsing import parse_user_turn
from synth.stages.dialogue import conversation_cutoffs, turn_range, with_conversations

from test_resume import answered_keys, export_bytes, synth_build

DIALOGUES = {"share": 0.5, "turns": [2, 5]}


def dialogue_config(repo_root: Path, tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text())
    data.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"), dialogues=DIALOGUES)
    data["generation"].update(harmful_calls_per_subcategory=1, benign_calls_per_subcategory=1)
    data.setdefault("annotate", {})["every_turn"] = True  # the judges label every answer: first_unsafe_turn
    data.update(changes)
    path = tmp_path / f"pipeline-{len(list(tmp_path.glob('pipeline-*')))}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def built(repo_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("dialogues")
    config = dialogue_config(repo_root, tmp)
    out = tmp / "out"
    result = synth_build(config, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return config, out


def test_a_dialogue_build_has_conversations_in_every_scenario_kind_and_label(built):
    _, out = built
    final = read_table(out / "stages/decontaminate/rows")
    talks = final[final["strategy"] != ""]
    assert set(talks["turns"]) <= set(range(2, 6)) and len(set(talks["turns"])) >= 3
    assert talks["scenario"].nunique() == 7
    assert set(talks["kind"]) == {"harmful", "benign"}
    assert {"安全", "不安全"} <= set(talks["label"])
    for row in talks.to_dict("records"):
        history = parse_history(row["history"])
        # the turns before the last, user and assistant alternating, answered by one responder
        assert [m["role"] for m in history] == ["user", "assistant"] * (row["turns"] - 1)
        assert all(m["content"].strip() for m in history) and row["question"].strip()
        assert row["responder"] == row["history_responder"]
        assert row["attack"] == "dialogue" and row["source_question_id"]
    single = final[final["strategy"] == ""]
    assert (single["turns"] == 1).all() and (single["history"] == "").all()


def test_every_turn_gives_a_label_per_answer_and_the_first_unsafe_turn(built):
    _, out = built
    final = read_table(out / "stages/decontaminate/rows")
    earlier = 0
    for row in final.to_dict("records"):
        labels = json.loads(row["turn_labels"])
        assert len(labels) == row["turns"], row["id"]
        # the last is the judges' label; a label check after them may have moved the row to the tier
        assert labels[-1] == row["label"] or (row["label"] == "有争议" and ":" in row["controversy"]), row["id"]
        assert all(label in ("安全", "不安全", "有争议", "") for label in labels)
        first = next((i for i, label in enumerate(labels) if label in ("不安全", "")), None)
        expected = 0 if first is None else (first + 1 if labels[first] == "不安全" else None)
        got = row["first_unsafe_turn"]
        assert (None if pd.isna(got) else int(got)) == expected, (row["id"], labels, got)
        earlier += sum(1 for label in labels[:-1] if label)
    talks = final[final["turns"] >= 2]
    assert earlier >= len(talks)  # the conversations' earlier answers were labelled
    assert (talks["first_unsafe_turn"].dropna() < talks.loc[talks["first_unsafe_turn"].notna(), "turns"]).any()
    corpus = pd.concat(pd.read_parquet(f) for f in sorted((out / "corpus/data").glob("*.parquet")))
    assert {"turn_labels", "first_unsafe_turn"} <= set(corpus.columns)
    report = json.loads((out / "report/report.json").read_text(encoding="utf-8"))
    figures = [d["first_unsafe_turn"] for d in report["dialogues"]]
    assert any(f is not None and f >= 1 for f in figures)
    annotate = next(s for s in json.loads((out / "manifest.json").read_text())["stages"] if s["name"] == "annotate")
    asked = annotate["requests"]["sent"] + annotate["requests"]["cached"]
    assert asked > 2 * annotate["rows_in"]  # two judges per pair, and again per earlier answer


def test_an_earlier_answer_s_judge_reads_the_conversation_up_to_it(repo_root: Path, tmp_path: Path):
    from synth.config import load_config
    from synth.stages.labelling import judge_requests, without_turn
    from synth.templates import load_catalog

    catalog = load_catalog(repo_root / "templates", repo_root / "seeds")
    config, _, _ = load_config(dialogue_config(repo_root, tmp_path))
    role = config.roles.judges[0]
    history = [{"role": "user", "content": "第一问"}, {"role": "assistant", "content": "第一答"},
               {"role": "user", "content": "第二问"}, {"role": "assistant", "content": "第二答"}]
    rows = pd.DataFrame([{"id": "c1", "scenario": "illegal_activities", "question": "第三问", "response": "第三答",
                          "history": json.dumps(history, ensure_ascii=False), "turns": 3, "reject_reason": ""},
                         {"id": "s1", "scenario": "illegal_activities", "question": "单问", "response": "单答",
                          "history": "", "turns": 1, "reject_reason": ""}])
    last, first, second, third = (judge_requests(rows, catalog, role, "chat", 1, turn=t) for t in range(4))
    assert len(last) == 2 and len(first) == len(second) == 1 and len(third) == 0
    assert "第三答" in last["prompt"][0] and "第二答" in last["prompt"][0]
    assert "第一答" in first["prompt"][0] and "第二问" not in first["prompt"][0]
    assert "第二答" in second["prompt"][0] and "第三问" not in second["prompt"][0]
    assert len({last["request_id"][0], first["request_id"][0], second["request_id"][0]}) == 3
    assert list(without_turn(rows, 1)["id"]) == ["s1"] and list(without_turn(rows, 2)["id"]) == ["s1"]


def test_the_dialogues_configuration_loads_messages_and_the_counts_reconcile(built):
    _, out = built
    corpus = out / "corpus"
    loaded = datasets.load_dataset(str(corpus), "dialogues")
    rows = [r for split in loaded.values() for r in split]
    assert rows and all(r["turns"] >= 2 and len(r["messages"]) == 2 * r["turns"] for r in rows)
    assert all(m["role"] == ("user", "assistant")[i % 2] for r in rows for i, m in enumerate(r["messages"]))
    # the conversations among the agreed rows, exactly
    default = datasets.load_dataset(str(corpus))
    agreed_dialogues = sum(1 for split in default.values() for r in split if r["turns"] >= 2)
    assert len(rows) == agreed_dialogues
    manifest = json.loads((out / "manifest.json").read_text())
    converse = next(s for s in manifest["stages"] if s["name"] == "converse")
    written = read_table(out / "stages/converse/rows")
    rejected = pd.read_parquet(out / "rejects/converse.parquet")  # a file (read_table reads a directory)
    created = int((written["strategy"] != "").sum()) + len(rejected)
    # every row in is a one-turn row out; every conversation started is a row out or a reject
    assert converse["rows_in"] == int((written["strategy"] == "").sum())
    assert converse["rows_out"] + sum(converse["rejected"].values()) == converse["rows_in"] + created
    assert converse["requests"]["sent"] > 0
    # conversations whose user turn failed a question filter are rejects naming the filter and turn
    assert sum(converse["rejected"].values()) == len(rejected)
    assert all(r.startswith("dialogue_user_turn: ") and r.endswith(")") for r in rejected["reject_reason"])


def test_sigkill_in_turn_three_then_resume_equals_a_clean_build(built, tmp_path: Path):
    config, reference = built
    out = tmp_path / "out"
    # round 5 of converse answers user turn 3: turns 1–2 and the writer's turn 3 are answered
    killed = synth_build(config, out, fault="round:converse:5")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    answered_before = answered_keys(out)
    sent_before = set((out / "cache/sent").rglob("*.txt"))
    resumed = synth_build(config, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert export_bytes(out) == export_bytes(reference)
    sent_after = [k for f in set((out / "cache/sent").rglob("*.txt")) - sent_before for k in f.read_text().split()]
    assert sent_after and not answered_before & set(sent_after)
    converse = next(s for s in json.loads((out / "manifest.json").read_text())["stages"] if s["name"] == "converse")
    # turns 1–2 (and turn 3's user side) came from the cache
    assert converse["requests"]["cached"] > 0 and converse["requests"]["sent"] > 0


# -- logic, no Ray ------------------------------------------------------------------


def _question(i: int, kind: str = "harmful", attack: str = "none") -> dict:
    return {"id": f"q{i}", "kind": kind, "attack": attack, "question": f"示例问题{i}？", "scenario": "s",
            "elements": {"behavior": "示例行为", "benign_topic": "示例话题"}}


def test_conversations_are_drawn_deterministically_from_plain_questions_only():
    batch = pd.DataFrame([_question(i) for i in range(30)] + [_question(i, kind="benign") for i in range(30, 40)]
                         + [_question(99, attack="obfuscation:pinyin")])
    columns = [*batch.columns, "strategy", "turns", "history", "history_responder", "reject_reason",
               "generator", "template_id", "template_hash", "parent_id", "source_question_id", "raw"]
    strategies = {"harmful": [{"id": "escalation", "turns": (3, 4)}], "benign": [{"id": "follow_up", "turns": (2, 2)}]}
    kwargs = dict(strategies=strategies, seed=7, responders=["a", "b"], per_question=1, writer="w",
                  dialogue_hash="h", columns=columns)
    cutoffs = conversation_cutoffs(batch, 0.5, strategies, seed=7)
    first = with_conversations(batch, cutoffs=cutoffs, **kwargs)
    # the share holds in each scenario × kind, whatever the batches: two halves give the same rows
    halves = pd.concat([with_conversations(batch.iloc[:17], cutoffs=cutoffs, **kwargs),
                        with_conversations(batch.iloc[17:], cutoffs=cutoffs, **kwargs)], ignore_index=True)
    pd.testing.assert_frame_equal(first, halves)
    talks = first[first["strategy"] != ""]
    assert talks["kind"].value_counts().to_dict() == {"harmful": 15, "benign": 5}  # half of 30 and of 10
    assert len(first) == len(batch) + len(talks)  # every question stays, as a one-turn row
    assert set(talks.loc[talks["kind"] == "harmful", "turns"]) <= {3, 4}
    assert set(talks.loc[talks["kind"] == "benign", "turns"]) == {2} and set(talks["history_responder"]) <= {"a", "b"}
    assert "q99" not in set(talks["source_question_id"])  # never from an obfuscated copy
    assert (talks["question"] == "").all() and (talks["generator"] == "w").all()
    # the lowest draws: another seed picks other questions
    other = with_conversations(batch, cutoffs=conversation_cutoffs(batch, 0.5, strategies, seed=8), **{**kwargs, "seed": 8})
    assert set(other.loc[other["strategy"] != "", "source_question_id"]) != set(talks["source_question_id"])
    # a small share still seeds one conversation per scenario × kind; none at 0
    few = with_conversations(batch, cutoffs=conversation_cutoffs(batch, 0.01, strategies, seed=7), **kwargs)
    assert few.loc[few["strategy"] != "", "kind"].value_counts().to_dict() == {"harmful": 1, "benign": 1}
    # dialogues.min_per_group raises that floor, capped at the questions a group has
    floor = with_conversations(batch, cutoffs=conversation_cutoffs(batch, 0.01, strategies, seed=7, at_least=12),
                               **kwargs)
    assert floor.loc[floor["strategy"] != "", "kind"].value_counts().to_dict() == {"harmful": 12, "benign": 10}
    assert conversation_cutoffs(batch, 0.0, strategies, seed=7) == {}
    assert with_conversations(batch, cutoffs={}, **kwargs)["strategy"].eq("").all()


@pytest.mark.parametrize("text,expected", [
    ("用户：那具体应该怎么理解呢？\n助手：好的", "那具体应该怎么理解呢？"),
    ("\n“我想再问一下这个问题。”", "我想再问一下这个问题。"),
    ("助手：这是助手的话", None),
    ("   ", None),
])
def test_a_user_turn_is_the_first_line_of_the_writer_s_answer(text: str, expected: str | None):
    parsed = parse_user_turn(text)
    assert (parsed.items[0] if parsed.items else None) == expected


def test_a_config_whose_turns_no_strategy_allows_exits_2_naming_the_field(repo_root: Path, tmp_path: Path):
    from synth.config import load_config
    from synth.stages.dialogue import usable_strategies
    from synth.templates import load_catalog

    config, templates, seeds = load_config(dialogue_config(repo_root, tmp_path,
                                                           dialogues={"share": 0.5, "turns": [8, 8]}))
    catalog = load_catalog(templates, seeds)
    with pytest.raises(BadInput, match="dialogues.turns"):
        usable_strategies(config, catalog)
    strategy = catalog.dialogue.strategies[0]
    assert turn_range(strategy, config) is None
    bad = dialogue_config(repo_root, tmp_path, dialogues={"share": 0.5, "turns": [0, 9]})
    result = synth_build(bad, tmp_path / "never")
    assert result.returncode == 2 and "dialogues.turns" in result.stderr


def test_filters_read_every_turn_and_dedup_compares_whole_conversations():
    from synth.config import FilterSpec
    from synth.filters import build_filters
    from synth.stages.cleaning import conversation_text, filter_reason

    history = json.dumps([{"role": "user", "content": "示例开场的提问"}, {"role": "assistant", "content": "答"}],
                         ensure_ascii=False)
    row = {"question": "示例最后的提问？", "response": "示例最后一轮的回答。", "history": history, "finish_reason": "stop"}
    filters = build_filters([FilterSpec(name="length", params={"field": "response", "min_chars": 2,
                                                               "max_chars": 4000})], "filters.pairs")
    # the last answer passes; the first turn's one-character answer does not
    assert filter_reason(filters, {**row, "history": ""}, per_turn=True) == ""
    assert filter_reason(filters, row, per_turn=True) == "length: response_too_short (turn 1)"
    assert filter_reason(filters, row, per_turn=False) == ""
    batch = pd.DataFrame([{**row, "history": ""}, row])
    texts = conversation_text(batch, ("question", "response")).tolist()
    assert texts[0] == "示例最后的提问？\n示例最后一轮的回答。"  # a single question: its fields, as before
    assert texts[1] == "示例开场的提问\n答\n" + texts[0]


def test_every_user_turn_passes_the_question_filters_except_is_question():
    from synth.config import FilterSpec
    from synth.filters import user_turn_filters
    from synth.stages.dialogue import record_turn
    from synth.stages.labelling import carry

    specs = [FilterSpec(name="is_question", params={"field": "question"}),
             FilterSpec(name="length", params={"field": "question", "min_chars": 6, "max_chars": 300}),
             FilterSpec(name="truncation", params={"field": "question", "finish_field": "gen_finish_reason",
                                                   "on_length": "drop"})]
    filters = user_turn_filters(specs)
    assert [f.name for f in filters] == ["length", "truncation"]
    base = {"history": "", "turns": 3, "question": "示例种子问题？", "strategy": "pushback", "reject_reason": "",
            "error": ""}
    answers = [("a", "我理解你的顾虑，我在做相关的研究工作。", "stop"),  # no question: kept
               ("b", "好的", "stop"),  # too short
               ("c", "请继续讲讲这个话题的历史背景和", "length")]  # cut at max_tokens
    # as the engine answers: the row's columns carried (renamed where a request column has the name)
    answered = pd.DataFrame([{**carry({**base, "id": i}), "text": text, "finish_reason": finish}
                             for i, text, finish in answers])
    columns = ["id", "history", "turns", "question", "strategy", "reject_reason"]
    out = record_turn(answered, "user", 1, columns, filters).set_index("id")
    assert out.loc["a", "reject_reason"] == "" and "研究工作" in parse_history(out.loc["a", "history"])[0]["content"]
    assert out.loc["b", "reject_reason"] == "dialogue_user_turn: length: question_too_short (turn 1)"
    assert out.loc["c", "reject_reason"].startswith("dialogue_user_turn: truncation: ")
    assert out.loc["c", "reject_reason"].endswith("(turn 1)")
    unfiltered = record_turn(answered, "user", 1, columns).set_index("id")
    assert (unfiltered["reject_reason"] == "").all()


def test_plan_counts_the_turn_requests_and_an_earlier_build_s_rates_match_it(built):
    import subprocess
    import sys

    config, out = built

    def plan(*extra: str) -> dict:
        result = subprocess.run([sys.executable, "-m", "synth.cli", "plan", str(config), "--json", *extra],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return next(s for s in json.loads(result.stdout)["stages"] if s["name"] == "converse")

    manifest = next(s for s in json.loads((out / "manifest.json").read_text())["stages"] if s["name"] == "converse")
    measured = manifest["requests"]["sent"] + manifest["requests"]["cached"]
    assert plan()["requests"] > 0  # from the strategies' turn ranges alone
    planned = plan("--from-build", str(out))
    assert abs(planned["requests"] - measured) <= 0.02 * measured
    assert abs(planned["rows"] - manifest["rows_out"]) <= 0.02 * manifest["rows_out"]
