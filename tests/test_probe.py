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
