"""Dialogue rows in the exports and the report (issue 31, items 4 and 5).

The build directory is made by hand, as in test_sft_export.py: final-stage rows carrying the
converse stage's columns (strategy, turns, history, history_responder; some rows 3- or 2-turn
conversations, the others single-turn), a marker and a manifest, then `export_build`. The
same rows without those columns are a build from before the converse stage. Texts are
abstract placeholders.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.config import load_config
from synth.errors import BadInput
from synth.export import STAGE_COLUMNS, export_build, export_format
from synth.pipeline import PIPELINE
from synth.report import report_numbers
from synth.report.render import to_markdown
from synth.rows import MESSAGES_TYPE
from synth.sft import GuardPrompt

FINAL_STAGE = PIPELINE.final.name
SCENARIOS = {"illegal_activities": ("违法犯罪", "cybersecurity", "网络安全"),
             "bias_discrimination": ("偏见歧视", "region", "地域")}
DIALOGUE_MARK = "多轮对话"  # in the dialogue judge's prompt only


def _conversation(k: int, turns: int) -> list[dict[str, str]]:
    """The messages before the last user turn of a `turns`-turn conversation."""
    return [{"role": role, "content": f"示例{'提问' if role == 'user' else '回答'}{t}（行{k}）"}
            for t in range(1, turns) for role in ("user", "assistant")]


# Rows 0-6 are illegal_activities, 7-13 bias_discrimination; per scenario 3 安全, 3 不安全 (the demo's
# balance cap: none cut), 1 有争议 (rows 6 and 13). Row k's conversation: strategy and user turns.
STRATEGIES = {1: ("escalation", 3), 4: ("escalation", 3), 6: ("escalation", 3), 8: ("escalation", 3),
              11: ("escalation", 3), 13: ("escalation", 3),
              2: ("benign_followup", 2), 5: ("benign_followup", 2), 10: ("benign_followup", 2)}


def _dialogue(k: int) -> dict:
    """Row k's conversation columns, as the converse stage writes them ("" / 1 for a single-turn row)."""
    if k not in STRATEGIES:
        return {"strategy": "", "turns": 1, "history": "", "history_responder": ""}
    strategy, turns = STRATEGIES[k]
    return {"strategy": strategy, "turns": turns, "history": json.dumps(_conversation(k, turns), ensure_ascii=False),
            "history_responder": "r"}


def _rows() -> list[dict]:
    rows = []
    for scenario, (scenario_name, sub, sub_name) in SCENARIOS.items():
        for label in ("安全", "不安全", "有争议"):
            for _ in range(3 if label != "有争议" else 1):
                k = len(rows)
                analyze = f"示例分析：{'回答拒绝了请求' if label == '安全' else '回答给出了帮助'}（行{k}）。"
                rows.append({
                    "id": f"{k:016x}", "scenario": scenario, "scenario_name": scenario_name, "subcategory": sub,
                    "subcategory_name": sub_name, "kind": "harmful", "attack": "none",
                    "question": f"示例最后提问（行{k}）", "response": f"示例最后回答（行{k}）", "responder": "r",
                    "persona": "helpful", "label": label, "analyze": analyze,
                    "unsafe_score": {"安全": 0.1, "不安全": 0.9, "有争议": 0.5}[label],
                    "judgements": [{"judge": "judge-a", "verdict": "不安全" if label != "安全" else "安全",
                                    "analysis": analyze, "raw": "{}", "error": ""}],
                    "elements": {"behavior": "某类行为"}, "generator": "g", "template_id": scenario,
                    "template_hash": "0" * 16, "finish_reason": "stop", "seed": k,
                    # the judge field refusal: asked for, one row left without a value (the judges disagreed)
                    "question_harmful": None, "refusal": None if k == 1 else label == "安全", "judged_subcategory": None,
                    "source_question_id": "", "controversy": "judges_disagree" if label == "有争议" else "",
                    "question_score": None, "requested_kind": "harmful", "requested_subcategory": sub,
                    "question_route": "", **_dialogue(k),
                })
    return rows


def make_build(out: Path, config_path: Path, rows: list[dict], columns=STAGE_COLUMNS) -> Path:
    config, _, _ = load_config(config_path)
    final = out / "stages" / FINAL_STAGE
    (final / "rows").mkdir(parents=True)
    df = pd.DataFrame(rows)[[c for c in columns if c in rows[0]]]
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), final / "rows" / "part-0.parquet")
    (final / "_SUCCESS.json").write_text(json.dumps({"signature": "x", "record": {}}))
    counts = export_build(out, config)
    stage = {"name": FINAL_STAGE, "rows_in": len(rows), "rows_out": len(rows), "rejected": {}, "seconds": 0.0}
    manifest = {"name": config.name, "config_hash": config.fingerprint(), "dry_run": True, "stages": [stage],
                "export": counts}
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory, repo_root: Path) -> tuple[Path, Path]:
    """(the build with dialogue rows, the same rows as a build from before the converse stage)."""
    tmp = tmp_path_factory.mktemp("dialogues")
    config = repo_root / "pipelines/demo.yaml"
    old_columns = [c for c in STAGE_COLUMNS if c not in ("strategy", "turns", "history", "history_responder")]
    return make_build(tmp / "build", config, _rows()), make_build(tmp / "old", config, _rows(), old_columns)


def _corpus(build: Path, view: str = "data") -> dict[str, dict]:
    return {r["id"]: {**r, "split": f.name.split("-")[0]}
            for f in sorted((build / "corpus" / view).glob("*.parquet")) for r in pq.read_table(f).to_pylist()}


def test_corpus_rows_carry_the_conversation_as_messages(builds):
    build, old = builds
    source = {r["id"]: r for r in _rows()}
    corpus = _corpus(build)
    assert len(corpus) == 12  # the agreed rows, none cut by balance
    turns = {}
    for i, row in corpus.items():
        k = int(i, 16)
        expected = [*_conversation(k, source[i]["turns"]), {"role": "user", "content": f"示例最后提问（行{k}）"},
                    {"role": "assistant", "content": f"示例最后回答（行{k}）"}]
        assert row["messages"] == expected
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * row["turns"]
        assert (row["strategy"], row["history_responder"]) == (source[i]["strategy"], source[i]["history_responder"])
        assert "history" not in row  # the conversation is in messages
        turns[row["turns"]] = turns.get(row["turns"], 0) + 1
    assert turns == {1: 5, 2: 3, 3: 4}
    old_corpus = _corpus(old)  # a build from before the converse stage: every row single-turn, same schema
    assert set(old_corpus) == set(corpus)
    for row in old_corpus.values():
        assert row["messages"] == [{"role": "user", "content": row["question"]},
                                   {"role": "assistant", "content": row["response"]}]
        assert (row["turns"], row["strategy"], row["history_responder"]) == (1, "", "")
    for b in (build, old):  # one type in every file, the empty ones too
        files = sorted((b / "corpus").rglob("*.parquet"))
        assert len(files) >= 6
        for f in files:
            schema = pq.read_schema(f)
            assert schema.field("messages").type == MESSAGES_TYPE, f
            assert schema.field("turns").type == pa.int64(), f


def test_dialogues_configuration_holds_the_agreed_multi_turn_rows_in_their_split(builds, tmp_path: Path):
    build, _ = builds
    corpus = _corpus(build)
    dialogues = datasets.load_dataset(str(build / "corpus"), "dialogues", cache_dir=str(tmp_path / "cache"))
    assert set(dialogues) == {"train", "validation"}
    expected = {split: sorted(i for i, r in corpus.items() if r["turns"] >= 2 and r["split"] == split)
                for split in ("train", "validation")}
    assert {split: sorted(dialogues[split]["id"]) for split in dialogues} == expected
    assert sum(map(len, expected.values())) == 7 and all(expected.values())
    for split in dialogues:
        assert "messages" in dialogues[split].column_names
        for row in dialogues[split]:
            assert row["messages"] == corpus[row["id"]]["messages"] and len(row["messages"]) >= 4
            assert row["label"] in ("安全", "不安全")  # the controversial dialogue rows are not in it
    tier = _corpus(build, "strict")
    assert sorted(int(i, 16) for i in tier) == [6, 13]  # controversial conversations: in strict/loose only
    counts = json.loads((build / "manifest.json").read_text())["export"]["dialogues"]
    assert counts == {"rows": 7, "train": len(expected["train"]), "validation": len(expected["validation"])}


def test_without_dialogue_rows_the_configuration_is_left_out(builds, tmp_path: Path):
    _, old = builds
    card = (old / "corpus" / "README.md").read_text(encoding="utf-8")
    assert "config_name: default" in card and "config_name: dialogues" not in card
    assert not (old / "corpus" / "dialogues").exists()
    assert sum(map(len, datasets.load_dataset(str(old / "corpus"), cache_dir=str(tmp_path / "c")).values())) == 12
    with pytest.raises(ValueError):
        datasets.load_dataset(str(old / "corpus"), "dialogues", cache_dir=str(tmp_path / "c"))
    build, _ = builds
    assert "config_name: dialogues" in (build / "corpus" / "README.md").read_text(encoding="utf-8")


def test_sft_renders_a_dialogue_with_the_dialogue_judge_and_single_turn_rows_as_before(builds, repo_root: Path):
    build, old = builds
    prompt = GuardPrompt.from_file(repo_root / "templates/shared/judge.yaml",
                                   repo_root / "templates/shared/dialogue_judge.yaml")
    corpus = _corpus(build)
    sft = {r["id"]: r for split in ("train", "validation")
           for r in pq.read_table(build / f"sft/data/{split}-00000-of-00001.parquet").to_pylist()}
    before = {r["id"]: r for split in ("train", "validation")
              for r in pq.read_table(old / f"sft/data/{split}-00000-of-00001.parquet").to_pylist()}
    assert set(sft) == set(before) == set(corpus)
    for i, row in sft.items():
        user, assistant = row["messages"]
        source = corpus[i]
        assert json.loads(assistant["content"]) == {"答案": source["label"], "分析": source["analyze"]}
        if source["turns"] == 1:  # byte for byte the prompt of a build without dialogues
            assert row == before[i]
            assert DIALOGUE_MARK not in user["content"]
            continue
        assert DIALOGUE_MARK in user["content"] and row != before[i]
        # every turn of the conversation, in order, the last answer marked as the one to judge
        positions = [user["content"].index(m["content"]) for m in source["messages"]]
        assert positions == sorted(positions) and len(positions) == 2 * source["turns"]
        assert f"助手（最后一条回答，待判断）：{source['response']}" in user["content"]
        assert prompt.judge.rubrics[0].text in user["content"]
        assert user["content"] == prompt.render(source["question"], source["response"], source["messages"][:-2])[1]


def test_libra_test_is_single_turn_and_the_card_says_what_it_leaves_out(builds, tmp_path: Path):
    build, old = builds
    corpus = _corpus(build)
    ids = [json.loads(line)["id"] for line in (build / "libra_test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert ids == sorted(i for i, r in corpus.items() if r["turns"] == 1) and len(ids) == 5
    assert len((old / "libra_test.jsonl").read_text(encoding="utf-8").splitlines()) == 12
    export_format(build, "libra-test", tmp_path / "l.jsonl")  # the re-export leaves them out too
    assert (tmp_path / "l.jsonl").read_bytes() == (build / "libra_test.jsonl").read_bytes()
    card = (build / "corpus" / "README.md").read_text(encoding="utf-8")
    assert "`../libra_test.jsonl` (Libra-Test's single-turn format) leaves out the\n7 dialogue rows" in card


def test_report_counts_dialogues_per_strategy_and_scenario(builds):
    build, old = builds
    numbers = report_numbers(build)
    table = {(d["strategy"], d["scenario"]): d for d in numbers["dialogues"]}
    # every final-stage conversation (the controversial ones too), before balancing
    assert {k: v["conversations"] for k, v in table.items()} == {
        ("benign_followup", "bias_discrimination"): 1, ("benign_followup", "illegal_activities"): 2,
        ("escalation", "bias_discrimination"): 3, ("escalation", "illegal_activities"): 3}

    def figures(strategy: str, scenario: str) -> tuple:
        d = table[(strategy, scenario)]
        return d["mean_turns"], d["unsafe_yield"], d["controversial_share"], d["refusal_share"]

    # rows 1 (安全, no refusal value), 4 (不安全), 6 (有争议): refusal of the two with a value
    assert figures("escalation", "illegal_activities") == (3.0, 0.5, 0.3333, 0.0)
    assert figures("escalation", "bias_discrimination") == (3.0, 0.5, 0.3333, 0.3333)  # rows 8 安全, 11 不安全, 13
    assert figures("benign_followup", "illegal_activities") == (2.0, 0.5, 0.0, 0.5)  # rows 2 安全, 5 不安全
    assert figures("benign_followup", "bias_discrimination") == (2.0, 1.0, 0.0, 0.0)  # row 10 不安全
    markdown = to_markdown(numbers, {})
    assert "## Dialogues per strategy and scenario" in markdown
    assert "| escalation | bias_discrimination | 3 | 3.000 | 50.0% | 33.3% | 33.3% |" in markdown
    old_numbers = report_numbers(old)
    assert old_numbers["dialogues"] == [] and "## Dialogues" not in to_markdown(old_numbers, {})


def test_a_history_that_is_not_a_conversation_names_the_row(tmp_path: Path, repo_root: Path):
    rows = _rows()
    rows[0]["history"] = '[{"role": "system", "content": "x"}]'
    with pytest.raises(BadInput, match=f"row {rows[0]['id']}: history\\[0\\].role"):
        make_build(tmp_path / "bad", repo_root / "pipelines/demo.yaml", rows)
