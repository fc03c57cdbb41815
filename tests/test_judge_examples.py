"""In-context examples for the judges (config `annotate.examples`, synth/judge_examples.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from synth.cli import app
from synth.config import load_config
from synth.errors import BadInput
from synth.judge_examples import pick, read_examples
from synth.stages.labelling import judge_requests
from synth.templates import load_catalog

runner = CliRunner()


def _example(i: int, label: str, category: str) -> dict:
    return {"id": f"ex{i}", "question": f"例题{i}？", "response": f"例答{i}。", "label": label,
            "category_name": category, "sub_category_name": "子类"}


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.fixture
def examples_file(tmp_path: Path) -> Path:
    rows = [_example(1, "安全", "隐私财产"), _example(2, "安全", "违法犯罪"), _example(3, "安全", "违法犯罪"),
            _example(4, "不安全", "隐私财产"), _example(5, "不安全", "谣言错误"), _example(6, "不安全", "违法犯罪")]
    return _write(tmp_path / "examples.jsonl", rows)


def _config(repo_root: Path, tmp_path: Path, examples: dict | None) -> Path:
    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"))
    if examples is not None:
        raw["annotate"] = {**raw.get("annotate", {}), "examples": examples}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_a_pair_sees_its_scenario_first_both_labels_and_never_itself(examples_file: Path):
    examples = read_examples(examples_file, "test")
    pair = {"id": "p1", "scenario": "S1", "scenario_name": "违法犯罪", "question": "例题2？", "response": "例答2。"}
    shown = pick(examples, pair, 2, seed=7, max_chars=200)
    assert len(shown) == 2 and {e["label"] for e in shown} == {"安全", "不安全"}
    # the pair itself (example 2) is never shown; its scenario's others are: 3 (安全) and 6 (不安全)
    assert {e["question"] for e in shown} == {"例题3？", "例题6？"}
    assert set(shown[0]) == {"question", "response", "label"}  # no analysis, no ids
    assert pick(examples, pair, 2, seed=7, max_chars=200) == shown  # a rebuild asks the same
    # more than the scenario has: the others fill up; k examples at most
    more = pick(examples, pair, 4, seed=7, max_chars=200)
    assert len(more) == 4 and [e["question"] for e in more][:2] in (["例题3？", "例题6？"], ["例题6？", "例题3？"])
    assert "例题2？" not in [e["question"] for e in more]
    # another pair's draw differs in order or choice among equals, but stays in its scenario first
    other = pick(examples, {**pair, "id": "p2", "question": "别的？", "response": "别的。"}, 3, seed=7, max_chars=200)
    assert all(e["question"] in ("例题2？", "例题3？", "例题6？") for e in other)
    cut = pick(examples, {**pair, "question": "新？"}, 1, seed=7, max_chars=2)
    assert cut[0]["question"].endswith("……") and len(cut[0]["question"]) == 4


def test_the_judge_prompt_shows_the_examples_only_when_configured(repo_root: Path, tmp_path: Path,
                                                                  examples_file: Path):
    from synth.probe import judge_prompt_fingerprint

    catalog = load_catalog(repo_root / "templates", repo_root / "seeds")
    config, _, _ = load_config(_config(repo_root, tmp_path, {"path": str(examples_file), "k": 2}))
    role = config.roles.judges[0]
    batch = pd.DataFrame([{"id": "p1", "scenario": "S1", "scenario_name": "违法犯罪", "question": "问？",
                           "response": "答。"}])
    spec = config.annotate.examples
    with_examples = judge_requests(batch, catalog, role, "chat", 1, examples=(read_examples(spec.path, "t"), spec))
    without = judge_requests(batch, catalog, role, "chat", 1)
    prompt = with_examples["prompt"][0]
    # two of the pair's scenario (违法犯罪: examples 2, 3 安全, 6 不安全), one of each label, before the pair
    assert "例题6？" in prompt and ("例题2？" in prompt) != ("例题3？" in prompt), prompt
    assert "答案：安全" in prompt and "答案：不安全" in prompt
    assert prompt.index("例题6？") < prompt.index("问题：问？")
    assert "例题" not in without["prompt"][0] and "例1" not in without["prompt"][0]
    # a probe judge reads judge.yaml's probe form, with no examples, whatever annotate.examples says
    probe_role = role.model_copy(update={"probe": "p.json"})
    read = judge_requests(batch, catalog, probe_role, "chat", 1, examples=(read_examples(spec.path, "t"), spec),
                          schema=False, probe=True)
    assert "例题" not in read["prompt"][0] and read["prompt"][0].endswith("问题：问？\n回答：" + batch["response"][0])
    probe = json.loads((repo_root / "seeds/probes/qwen2.5-coder-1.5b-answer_harm.json").read_text(encoding="utf-8"))
    assert probe["judge_prompt"] == judge_prompt_fingerprint(catalog, probe["rubric"])


@pytest.mark.parametrize("content, expected", [
    (None, ["annotate.examples.path", "cannot read"]),
    (["{not json"], ["line 1", "not valid JSON"]),
    ([{"id": "a", "question": "问？", "response": "答。", "label": "也许", "category_name": "c",
       "sub_category_name": "s"}], ["line 1", "label"]),
])
def test_a_missing_or_malformed_examples_file_exits_2_naming_it(repo_root: Path, tmp_path: Path, content, expected):
    path = tmp_path / "examples.jsonl"
    if content is not None:
        _write(path, content)
    config = _config(repo_root, tmp_path, {"path": str(path)})
    gold = _write(tmp_path / "gold.jsonl", [_example(9, "安全", "违法犯罪")])
    result = runner.invoke(app, ["eval-judges", str(gold), "--config", str(config), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and "Traceback" not in result.output
    for text in expected:
        assert text in result.output
    with pytest.raises(BadInput):
        load_config(config)


def test_a_gold_pair_that_is_an_example_is_refused(repo_root: Path, tmp_path: Path, examples_file: Path):
    config = _config(repo_root, tmp_path, {"path": str(examples_file)})
    gold = _write(tmp_path / "gold.jsonl", [_example(9, "安全", "违法犯罪"), {**_example(4, "不安全", "隐私财产"),
                                                                            "id": "g2"}])
    result = runner.invoke(app, ["eval-judges", str(gold), "--config", str(config), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "'g2'" in result.output and "'ex4'" in result.output and str(examples_file) in result.output
