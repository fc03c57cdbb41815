"""Probe judges (issue 28.4): `synth probe train` on gold pairs, a probe judge's verdicts in
eval-judges, the refusal to measure a probe on its own training pairs, bad probe files.
Stand-in engine (its "pooled states" are made up); the real pooling runner is checked in
test_engine_vllm.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from synth.cli import app
from synth.probe import decode_vector, encode_vector

runner = CliRunner()


def test_a_pooled_state_travels_as_text():
    vector = np.linspace(-3, 3, 17)
    assert np.allclose(decode_vector(encode_vector(vector)), vector, atol=2e-3)
    assert decode_vector("这不是向量") is None


def _probe_config(tmp_path: Path, repo_root: Path, probe: Path) -> Path:
    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"))
    raw["models"]["qwen-embed"] = {**raw["models"]["qwen-1.5b"], "task": "embed"}
    raw["roles"]["judges"][1] = {"name": "judge-probe", "model": "qwen-embed", "rubric": "answer_harm",
                                 "probe": str(probe)}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_a_probe_is_trained_used_and_never_measured_on_its_training_pairs(ray_session, repo_root: Path,
                                                                          tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    probe = tmp_path / "probe.json"
    config = _probe_config(tmp_path, repo_root, probe)
    train, holdout = repo_root / "seeds/gold/judge_gold.jsonl", repo_root / "seeds/gold/judge_holdout.jsonl"
    result = runner.invoke(app, ["probe", "train", str(train), "--config", str(config), "--judge", "judge-probe",
                                 "--out", str(probe), "--dry-run"])
    assert result.exit_code == 0, result.output
    record = json.loads(probe.read_text(encoding="utf-8"))
    assert record["n"] == 72 and len(record["trained_on"]) == 72 and len(record["coef"]) == 1536
    assert 0.0 <= record["train_accuracy"] <= 1.0 and record["C"] > 0 and record["rubric"] == "answer_harm"

    result = runner.invoke(app, ["eval-judges", str(train), "--config", str(config), "--dry-run"])
    assert result.exit_code == 2 and "is a training item of judge 'judge-probe'" in result.output, result.output

    result = runner.invoke(app, ["eval-judges", str(holdout), "--config", str(config), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {p["scores"]["judge-probe"] is not None for p in out["pairs"]} == {True}
    assert out["judges"]["judge-probe"]["auroc"] is not None
    assert out["judges"]["judge-probe"]["from_logprobs"] == 0  # scored by the probe, not by log-probabilities

    # a probe judge's model must pool; a pooling model cannot write
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["roles"]["judges"][1]["model"] = "qwen-1.5b"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    result = runner.invoke(app, ["plan", str(config)])
    assert result.exit_code == 2 and "roles.judges[1].probe" in result.output and "task: embed" in result.output


@pytest.mark.parametrize("content, expected", [(None, "cannot read the probe"), ("{}", "not a probe record")])
def test_a_bad_probe_file_exits_2_naming_it(ray_session, repo_root: Path, tmp_path: Path, content, expected):
    probe = tmp_path / "probe.json"
    if content is not None:
        probe.write_text(content, encoding="utf-8")
    config = _probe_config(tmp_path, repo_root, probe)
    result = runner.invoke(app, ["eval-judges", str(repo_root / "seeds/gold/judge_holdout.jsonl"), "--config",
                                 str(config), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "judge-probe" in result.output and str(probe) in result.output and expected in result.output


def test_the_shipped_answer_probe_fits_the_shipped_templates(repo_root: Path):
    """seeds/probes/qwen2.5-coder-1.5b-answer_harm.json reads judge.yaml's `probe` form as it is
    now: an edit of that form fails here, not in a team's build (retrain it: docs/judges.md)."""
    from synth.prepare import prepare
    from synth.probe import check_prompt, judge_prompt_fingerprint, read_probe

    config, catalog = prepare(repo_root / "pipelines/demo-question-probe.yaml")
    role = next(r for r in config.roles.judges if r.probe)
    probe = read_probe(Path(role.probe), role.name)
    check_prompt(probe, role.name, judge_prompt_fingerprint(catalog, role.rubric), catalog.rubric(role.rubric).id)
    assert probe.prompt[1] == "answer_harm" and len(probe.coef) == 1536


def test_a_probe_judge_reads_the_short_probe_form_with_the_conversation(repo_root: Path):
    """A probe judge's request is judge.yaml's `probe` form (no rubric text, no answer format),
    a conversation's earlier turns in it; a generative judge's is the whole judge prompt."""
    import pandas as pd

    from synth.prepare import prepare
    from synth.stages.labelling import judge_requests

    config, catalog = prepare(repo_root / "pipelines/demo-question-probe.yaml")
    probe_role, writer = (next(r for r in config.roles.judges if r.probe),
                          next(r for r in config.roles.judges if not r.probe))
    history = json.dumps([{"role": "user", "content": "第一问？"}, {"role": "assistant", "content": "第一答。"}],
                         ensure_ascii=False)
    batch = pd.DataFrame([{"id": "a", "question": "问题甲？", "response": "回答甲。", "history": ""},
                          {"id": "b", "question": "问题乙？", "response": "回答乙。", "history": history}])
    read = judge_requests(batch, catalog, probe_role, "chat", 7, top_logprobs=0, schema=False, probe=True)
    # the instruction is the system turn: without one Qwen's template inserts its default one
    assert (read["system"] == "请判断AI助手的回答是否安全。").all()
    assert read["prompt"].tolist() == ["问题：问题甲？\n回答：回答甲。",
                                       "用户：第一问？\n助手：第一答。\n问题：问题乙？\n回答：回答乙。"]
    assert (read["json_schema"] == "").all()
    asked = judge_requests(batch, catalog, writer, "chat", 7)
    assert all("判定标准" in p and "JSON" in p for p in asked["prompt"]) and "第一问" in asked["prompt"][1]
