"""The guard-pretraining (SFT) exports: layouts, `synth export`, and a real trainer consuming them.

The build directory is made by hand (final-stage parquet + marker + manifest, then
`export_build`), which is what a finished build looks like to the exports, in well
under a second. The trainer check runs TRL's SFTTrainer for a few steps on a tiny
random-init Gemma 3 with the real Gemma tokenizer (from the embedded demo model) and
the real Gemma 3 chat template (shipped in TRL). A few rows are 3-turn conversations (issue 31's
dialogue columns), so every layout and the trainer also take a dialogue row's guard prompt.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from synth.cli import app
from synth.config import load_config
from synth.export import INPUTS_DIR, STAGE_COLUMNS, export_build
from synth.pipeline import PIPELINE
from synth.output_parsing import parse_verdict
from synth.sft import LLAMA_FACTORY_NAMES, GuardPrompt, verdict_json

runner = CliRunner()

# Abstract placeholders only (no operational content), shaped like real rows.
SCENARIOS = {
    "illegal_activities": ("违法犯罪", "cybersecurity", "网络安全"),
    "bias_discrimination": ("偏见歧视", "region", "地域"),
    "physical_mental_health": ("身心健康", "mental_health", "心理健康"),
}

FINAL_STAGE = PIPELINE.final.name  # the stage whose rows the exports read
DIALOGUE_MARK = "多轮对话"  # in the dialogue judge's prompt, not in judge.yaml's


def _history(k: int) -> str:
    """Two earlier exchanges (a 3-turn conversation), abstract placeholders."""
    return json.dumps([{"role": "user", "content": f"示例提问一（{k}）"}, {"role": "assistant", "content": f"示例回答一（{k}）"},
                       {"role": "user", "content": f"示例提问二（{k}）"}, {"role": "assistant", "content": f"示例回答二（{k}）"}],
                      ensure_ascii=False)


def _rows(n_per_stratum: int = 3) -> list[dict]:
    rows = []
    for scenario, (scenario_name, sub, sub_name) in SCENARIOS.items():
        for label in ("安全", "不安全"):
            for i in range(n_per_stratum):
                k = len(rows)
                analyze = "" if k == 4 else f"回答{'拒绝了请求并给出正向引导' if label == '安全' else '提供了有害帮助'}（示例{k}）\n含“引号”与\"双引号\"。"
                rows.append({
                    "id": f"{k:016x}", "scenario": scenario, "scenario_name": scenario_name, "subcategory": sub,
                    "subcategory_name": sub_name, "kind": "harmful" if i % 2 == 0 else "benign", "attack": "none",
                    "question": f"关于{sub_name}的示例问题{k}？", "response": f"这是示例回答{k}。", "responder": "r",
                    "persona": "helpful", "label": label, "analyze": analyze,
                    "unsafe_score": 0.9 if label == "不安全" else 0.1,
                    "judgements": [{"judge": "judge-a", "verdict": label, "analysis": analyze, "raw": "{}", "error": ""},
                                   {"judge": "judge-b", "verdict": label, "analysis": "", "raw": "{}", "error": ""}],
                    "elements": {"behavior": "某类行为", "task_type": "问答", "region": "某地", "event": "某事件"},
                    "generator": "generator", "template_id": scenario, "template_hash": "0" * 16,
                    "finish_reason": "stop", "seed": k,
                    "question_harmful": None, "refusal": None, "judged_subcategory": None,  # no judge fields asked for
                    "source_question_id": "", "controversy": "",  # not an obfuscated copy; an agreed label
                    "turn_labels": "", "first_unsafe_turn": None,  # annotate.every_turn off
                    # no question judge ran: no verdict, the request as asked
                    "question_score": None, "requested_kind": "harmful" if i % 2 == 0 else "benign",
                    "requested_subcategory": sub, "question_route": "",
                    # every third row a 3-turn conversation (the converse stage's columns), the others single-turn
                    **({"strategy": "escalation", "turns": 3, "history": _history(k), "history_responder": "r"}
                       if k % 3 == 1 else {"strategy": "", "turns": 1, "history": "", "history_responder": ""}),
                })
    return rows


def make_build(out: Path, config_path: Path, rows: list[dict] | None = None) -> Path:
    """A finished build directory as the exports see it."""
    config, _, _ = load_config(config_path)
    final = out / "stages" / FINAL_STAGE
    (final / "rows").mkdir(parents=True)
    df = pd.DataFrame(rows if rows is not None else _rows())[list(STAGE_COLUMNS)]
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), final / "rows" / "part-0.parquet")
    (final / "_SUCCESS.json").write_text(json.dumps({"signature": "x", "record": {}}))
    counts = export_build(out, config)
    manifest = {"name": config.name, "config_hash": config.fingerprint(), "dry_run": True, "export": counts}
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False))
    return out


@pytest.fixture(scope="module")
def build(tmp_path_factory, repo_root: Path) -> Path:
    return make_build(tmp_path_factory.mktemp("sft") / "build", repo_root / "pipelines/demo.yaml")


@pytest.fixture(scope="module")
def prompt(repo_root: Path) -> GuardPrompt:
    return GuardPrompt.from_file(repo_root / "templates/shared/judge.yaml",
                                 repo_root / "templates/shared/dialogue_judge.yaml")


def _corpus_split(build: Path) -> dict[str, list[str]]:
    corpus = datasets.load_dataset(str(build / "corpus"))
    return {split: list(corpus[split]["id"]) for split in corpus}


def test_sft_loads_with_datasets_in_the_corpus_split(build: Path, prompt: GuardPrompt):
    sft = datasets.load_dataset(str(build / "sft"))
    assert set(sft) == {"train", "validation"}
    assert {split: list(sft[split]["id"]) for split in sft} == _corpus_split(build)
    assert len(sft["validation"]) > 0
    corpus = pd.concat([pd.read_parquet(p) for p in (build / "corpus" / "data").glob("*.parquet")]).set_index("id")
    assert {split: sum(corpus.loc[i, "turns"] == 3 for i in sft[split]["id"]) > 0 for split in sft} == \
        {"train": True, "validation": True}  # dialogue rows in both splits
    for split in sft:
        assert sft[split].column_names == ["messages", "id", "scenario", "label"]
        for row in sft[split]:
            source = corpus.loc[row["id"]]
            user, assistant = row["messages"]
            assert [user["role"], assistant["role"]] == ["user", "assistant"]
            # user turn = the judge template's chat form, rendered with this row's question and response
            # (a dialogue row: the dialogue judge's, with the earlier turns too)
            history = [dict(m) for m in source["messages"][:-2]]
            assert len(history) == (4 if source["turns"] == 3 else 0)
            assert user["content"] == prompt.render(source["question"], source["response"], history)[1]
            assert user["content"].startswith("你是一名文本安全专家") and source["question"] in user["content"]
            assert (DIALOGUE_MARK in user["content"]) == bool(history)
            verdict = json.loads(assistant["content"])
            assert list(verdict) == ["答案", "分析"]
            assert verdict == {"答案": source["label"], "分析": source["analyze"]}
            assert row["label"] == source["label"] and row["scenario"] == source["scenario"]
            assert "\\u" not in assistant["content"]  # ensure_ascii=False


def test_two_builds_load_as_two_datasets(build: Path, repo_root: Path, tmp_path: Path):
    """Regression: with a `configs:` block in the card, datasets caches a local folder by its
    name alone, so every build's corpus/ (and sft/) loaded as the first one ever loaded."""
    other = make_build(tmp_path / "other", repo_root / "pipelines/demo.yaml", _rows(n_per_stratum=2))
    cache = tmp_path / "hf-cache"
    for view in ("corpus", "sft"):
        first = datasets.load_dataset(str(build / view), cache_dir=str(cache))
        second = datasets.load_dataset(str(other / view), cache_dir=str(cache))
        assert sum(map(len, first.values())) == len(_rows())
        assert sum(map(len, second.values())) == len(_rows(n_per_stratum=2))


def test_alpaca_layout_has_the_same_prompt_and_answer(build: Path):
    sft = datasets.load_dataset(str(build / "sft"))
    alpaca = datasets.load_dataset("json", data_files={split: str(build / f"sft/alpaca/{split}.jsonl") for split in sft})
    for split in sft:
        assert list(alpaca[split]["id"]) == list(sft[split]["id"])
        for chat, flat in zip(sft[split], alpaca[split]):
            assert flat["instruction"] == chat["messages"][0]["content"]
            assert flat["input"] == ""
            assert flat["output"] == chat["messages"][1]["content"]
            assert flat["label"] == chat["label"]


def test_dataset_info_reads_the_way_llama_factory_reads_it(build: Path):
    """LLaMA-Factory: dataset_info.json in dataset_dir, `file_name` relative to it, loaded with
    `load_dataset(<file type>, data_files=...)`, columns and tags mapping the roles."""
    sft_dir = build / "sft"
    info = json.loads((sft_dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(info) == {name for names in LLAMA_FACTORY_NAMES.values() for name in names.values()}
    for name, entry in info.items():
        path = sft_dir / entry["file_name"]
        assert path.is_file(), name
        kind = {"parquet": "parquet", "jsonl": "json"}[path.suffix.lstrip(".")]
        data = datasets.load_dataset(kind, data_files=str(path), split="train")
        columns = entry["columns"]
        if entry["formatting"] == "sharegpt":
            tags = entry["tags"]
            for messages in data[columns["messages"]]:
                roles = [m[tags["role_tag"]] for m in messages]
                assert roles == [tags["user_tag"], tags["assistant_tag"]]
                assert all(m[tags["content_tag"]] for m in messages)
            prompts = [messages[0][tags["content_tag"]] for messages in data[columns["messages"]]]
        else:
            assert entry["formatting"] == "alpaca"
            for row in data:
                assert row[columns["prompt"]] and row[columns["response"]] and row[columns["query"]] == ""
            prompts = list(data[columns["prompt"]])
        # a dialogue row's prompt (the whole conversation in one user turn) reads the same way
        assert any(DIALOGUE_MARK in p and "示例提问二" in p for p in prompts), name
        split = "train" if name.endswith("_train") else "validation"
        assert len(data) == len(_corpus_split(build)[split])


def test_label_position_after_puts_the_analysis_first(build: Path, tmp_path: Path):
    assert verdict_json("安全", "理由", "after") == '{"分析": "理由", "答案": "安全"}'
    assert verdict_json("不安全", "理由") == '{"答案": "不安全", "分析": "理由"}'
    out = tmp_path / "sft_after"
    result = runner.invoke(app, ["export", str(build), "--format", "sft", "--out", str(out),
                                 "--label-position", "after"])
    assert result.exit_code == 0, result.output
    sft = datasets.load_dataset(str(out))
    for row in sft["train"]:
        verdict = json.loads(row["messages"][1]["content"])
        assert list(verdict) == ["分析", "答案"] and verdict["答案"] == row["label"]
        assert parse_verdict(row["messages"][1]["content"]).label == row["label"]
    assert "label position: `after`" in (out / "README.md").read_text(encoding="utf-8")


def test_export_command_writes_every_format(build: Path, tmp_path: Path):
    split = _corpus_split(build)
    n = sum(len(ids) for ids in split.values())

    result = runner.invoke(app, ["export", str(build), "--format", "sft", "--out", str(tmp_path / "sft")])
    assert result.exit_code == 0, result.output
    for path in ("data/train-00000-of-00001.parquet", "alpaca/validation.jsonl", "dataset_info.json", "README.md"):
        assert (tmp_path / "sft" / path).read_bytes() == (build / "sft" / path).read_bytes(), path

    result = runner.invoke(app, ["export", str(build), "--format", "alpaca", "--out", str(tmp_path / "alpaca")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "alpaca" / "train.jsonl").read_bytes() == (build / "sft/alpaca/train.jsonl").read_bytes()
    info = json.loads((tmp_path / "alpaca" / "dataset_info.json").read_text())
    assert info[LLAMA_FACTORY_NAMES["alpaca"]["train"]]["file_name"] == "train.jsonl"

    result = runner.invoke(app, ["export", str(build), "--format", "libra-test", "--out", str(tmp_path / "l.jsonl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "l.jsonl").read_bytes() == (build / "libra_test.jsonl").read_bytes()

    result = runner.invoke(app, ["export", str(build), "--format", "jsonl", "--out", str(tmp_path / "c.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == n
    assert {r["id"] for r in rows if r["split"] == "validation"} == set(split["validation"])
    assert rows[0]["judgements"][0]["judge"] == "judge-a" and "behavior" in rows[0]["elements"]
    loaded = datasets.load_dataset("json", data_files=str(tmp_path / "c.jsonl"), split="train")
    assert len(loaded) == n


def test_export_reads_the_recorded_judge_not_the_current_templates(repo_root: Path, tmp_path: Path):
    templates = tmp_path / "templates"
    shutil.copytree(repo_root / "templates", templates)
    config = tmp_path / "pipelines" / "demo.yaml"
    config.parent.mkdir()
    text = (repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8")
    config.write_text(text.replace("seeds: ../seeds", f"seeds: {repo_root / 'seeds'}"), encoding="utf-8")
    build = make_build(tmp_path / "build", config)
    recorded = (build / INPUTS_DIR / "judge.yaml").read_text(encoding="utf-8")
    assert recorded == (templates / "shared/judge.yaml").read_text(encoding="utf-8")
    dialogue_judge = templates / "shared/dialogue_judge.yaml"
    assert (build / INPUTS_DIR / "dialogue_judge.yaml").read_text(encoding="utf-8") == \
        dialogue_judge.read_text(encoding="utf-8")
    recorded_config, _, _ = load_config(build / INPUTS_DIR / "config.yaml")
    assert recorded_config.fingerprint() == json.loads((build / "manifest.json").read_text())["config_hash"]

    judge = templates / "shared/judge.yaml"
    for path in (judge, dialogue_judge):
        path.write_text(path.read_text(encoding="utf-8").replace("你是一名文本安全专家", "改过的提示"), encoding="utf-8")
    shutil.move(str(tmp_path / "pipelines"), str(tmp_path / "moved"))  # the config is gone too
    result = runner.invoke(app, ["export", str(build), "--format", "sft", "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    again = datasets.load_dataset(str(tmp_path / "again"), split="train")
    users = [row["messages"][0]["content"] for row in again]
    assert any(DIALOGUE_MARK in u for u in users) and any(DIALOGUE_MARK not in u for u in users)
    assert all(u.startswith("你是一名文本安全专家") for u in users)
    assert (tmp_path / "again/data/train-00000-of-00001.parquet").read_bytes() == \
        (build / "sft/data/train-00000-of-00001.parquet").read_bytes()


def test_a_build_without_recorded_inputs_exports_with_its_config(build: Path, tmp_path: Path, repo_root: Path):
    target = tmp_path / "old"
    shutil.copytree(build, target)
    shutil.rmtree(target / INPUTS_DIR)
    result = runner.invoke(app, ["export", str(target), "--format", "sft", "--out", str(tmp_path / "sft"),
                                 "--config", str(repo_root / "pipelines/demo.yaml")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sft/data/train-00000-of-00001.parquet").read_bytes() == \
        (build / "sft/data/train-00000-of-00001.parquet").read_bytes()


def test_export_reads_builds_of_older_config_schemas(build: Path, tmp_path: Path):
    """Only name and export.label_position are read from the recorded config: a build whose config
    has fields this synth no longer knows (or lacks new ones) still re-exports."""
    target = tmp_path / "b"
    shutil.copytree(build, target)
    recorded = target / INPUTS_DIR / "config.yaml"
    recorded.write_text(recorded.read_text(encoding="utf-8") + "retired_section: {x: 1}\n", encoding="utf-8")
    result = runner.invoke(app, ["export", str(target), "--format", "libra-test", "--out", str(tmp_path / "l.jsonl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "l.jsonl").read_bytes() == (build / "libra_test.jsonl").read_bytes()


@pytest.mark.parametrize("case", ["missing", "no_manifest", "no_final_stage", "no_corpus", "old_build"])
def test_export_refuses_what_is_not_a_finished_build(build: Path, tmp_path: Path, case: str):
    target = tmp_path / "b"
    if case != "missing":
        shutil.copytree(build, target)
    if case == "no_manifest":
        (target / "manifest.json").unlink()
    elif case == "no_final_stage":
        shutil.rmtree(target / "stages" / FINAL_STAGE)
    elif case == "no_corpus":
        shutil.rmtree(target / "corpus")
    elif case == "old_build":
        shutil.rmtree(target / INPUTS_DIR)
    result = runner.invoke(app, ["export", str(target), "--format", "sft", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert str(target) in result.output
    expected = {"missing": "no such build directory", "no_manifest": "not a finished build (manifest.json is missing)",
                "no_final_stage": "not a finished build (stages/decontaminate/_SUCCESS.json is missing)",
                "no_corpus": "not a finished build (corpus/data/train", "old_build": "--config"}[case]
    assert expected in result.output
    assert not (tmp_path / "out").exists()


def test_export_waits_for_no_build_it_refuses_a_build_in_progress(build: Path, tmp_path: Path):
    import os
    import socket

    from synth.lock import LOCK_NAME

    target = tmp_path / "b"
    shutil.copytree(build, target)
    (target / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    result = runner.invoke(app, ["export", str(target), "--format", "libra-test", "--out", str(tmp_path / "l.jsonl")])
    assert result.exit_code == 2 and "another build is writing here" in result.output, result.output
    (target / LOCK_NAME).unlink()
    result = runner.invoke(app, ["export", str(target), "--format", "libra-test", "--out", str(tmp_path / "l.jsonl")])
    assert result.exit_code == 0, result.output
    assert not (target / LOCK_NAME).exists()


def test_export_refuses_bad_arguments(build: Path, tmp_path: Path, repo_root: Path):
    not_export = tmp_path / "notes"
    not_export.mkdir()
    (not_export / "keep.txt").write_text("mine")
    cases = [
        (["--format", "csv", "--out", str(tmp_path / "x")], "--format must be one of"),
        (["--format", "sft", "--out", str(build)], "refusing to write over the build"),
        (["--format", "sft", "--out", str(build / "stages" / "x")], "refusing to write over the build"),
        (["--format", "sft", "--out", str(not_export)], "not an earlier export"),
        (["--format", "jsonl", "--out", str(tmp_path)], "is a directory"),
        (["--format", "sft", "--out", str(tmp_path / "s"), "--label-position", "middle"], "before or after"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["export", str(build), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert (build / "manifest.json").exists() and (build / "stages").is_dir()
    assert (not_export / "keep.txt").read_text() == "mine"


# -- a real trainer consumes sft/ ---------------------------------------------------------


def _gemma_tokenizer():
    """The real Gemma 3 tokenizer (embedded demo model) with the real Gemma 3 chat template (TRL ships it)."""
    import trl
    from transformers import AutoTokenizer

    from synth.models import DEFAULT_MODEL, EMBEDDED, models_cache_dir, resolve_model

    if not EMBEDDED[DEFAULT_MODEL].is_ready(models_cache_dir()):  # `make test` converts it first
        pytest.skip(f"{DEFAULT_MODEL} is not converted yet: run `make model` (python -m synth.models prepare)")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    # The GGUF carries no chat template; use the one google/gemma-3-*-it ship (TRL keeps a copy,
    # and knows its training variant with {% generation %} markers for assistant-only loss).
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "gemma3.jinja").read_text("utf-8")
    return tokenizer


def test_trl_sft_trainer_takes_the_export(build: Path, tmp_path: Path):
    try:
        import torch
        import trl  # noqa: F401
    except ImportError as e:  # the consumer check must run, not skip
        pytest.fail(f"{e.name} is not installed: TRL and torch belong in the test extra (pip install -e '.[cpu,test]')")
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    from trl import SFTConfig, SFTTrainer

    sft = datasets.load_dataset(str(build / "sft"))
    tokenizer = _gemma_tokenizer()
    # every row: the chat template renders it, and the assistant turn is the verdict JSON
    for split in sft:
        for row in sft[split]:
            text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
            assert row["messages"][0]["content"].strip() in text
            verdict = json.loads(row["messages"][1]["content"])
            assert verdict["答案"] == row["label"] and isinstance(verdict["分析"], str)

    # Tiny on purpose: the cost is the 262k-token vocabulary (the LM head), not the backbone.
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, layer_types=["full_attention"],
        max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    args = SFTConfig(
        output_dir=str(tmp_path / "trainer"), max_steps=2, per_device_train_batch_size=1, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0,
        assistant_only_loss=True, max_length=1024, dataloader_num_workers=0,
    )
    # a single-turn row and a dialogue row (its guard prompt holds the whole conversation)
    dialogue = [DIALOGUE_MARK in row["messages"][0]["content"] for row in sft["train"]]
    train = sft["train"].select([dialogue.index(False), dialogue.index(True)])
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    # assistant-only loss: the trained tokens are exactly the verdict JSON (+ the end-of-turn marker)
    for example, row in zip(trainer.train_dataset, train):
        decoded = tokenizer.decode([t for t in example["labels"] if t != -100])
        assert decoded.startswith(row["messages"][1]["content"]), decoded
        assert parse_verdict(decoded).label == row["label"]
        assert len(example["input_ids"]) < args.max_length  # nothing truncated
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses), losses
