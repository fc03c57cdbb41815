"""`synth plan` (synth/plan.py): requests, tokens, GPU-hours and API cost before a build runs.

The acceptance rates of one dry run (stand-in engine) predict another build of a different
size and seed within 10% per stage; the build records its plan in the manifest; API cost
follows the configured prices; a bad plan table exits 2 naming the field.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from config_edits import every_role
from synth.build import prepare, run_build
from synth.pipeline import PIPELINE
from synth.plan import make_plan


def _config(repo_root: Path, tmp_path: Path, name: str, change) -> Path:
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    data["templates"], data["seeds"] = str(repo_root / "templates"), str(repo_root / "seeds")
    change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _requests(manifest: dict) -> dict[str, int]:
    return {s["name"]: (s["requests"].get("sent") or 0) + (s["requests"].get("cached") or 0)
            for s in manifest["stages"]}


def test_one_dry_runs_rates_predict_a_bigger_build_within_ten_percent(demo_build, repo_root: Path, tmp_path: Path):
    previous, previous_manifest = demo_build

    def bigger(data):
        data["seed"] = 7
        data["generation"]["harmful_calls_per_subcategory"] = 3

    config_path = _config(repo_root, tmp_path, "bigger", bigger)
    config, catalog = prepare(config_path)
    plan = make_plan(config, catalog, previous)
    actual = _requests(run_build(config_path, tmp_path / "out", dry_run=True))
    assert plan["rates_from"] == str(previous)
    # every stage of the pipeline estimates itself; six send requests
    assert [s["name"] for s in plan["stages"]] == PIPELINE.names
    planned = {s["name"]: s for s in plan["stages"]}
    assert [name for name, s in planned.items() if s["requests"]] == ["queries", "augment", "judge_questions", "converse",
                                                                      "respond", "annotate"]
    for stage in plan["stages"]:
        assert abs(stage["requests"] - actual[stage["name"]]) <= 0.1 * actual[stage["name"]], (stage, actual)
    assert planned["queries"]["requests"] == actual["queries"]  # the generator's calls are exact
    assert actual["queries"] > _requests(previous_manifest)["queries"]  # a different size, not a copy
    # the build recorded its own plan (default rates), and its headline went to the log
    recorded = previous_manifest["plan"]
    assert {s["name"]: s for s in recorded["stages"]}["queries"]["requests"] == _requests(previous_manifest)["queries"]
    assert "plan: " in (previous / "build.log").read_text(encoding="utf-8")
    # the report puts plan and actual side by side
    from synth.report.collect import collect
    from synth.report.render import sections

    report = collect(previous)
    side = {s["stage"]: s for s in report["plan"]["stages"]}
    assert side["queries"]["planned_requests"] == side["queries"]["requests"] > 0
    assert side["annotate"]["requests"] == _requests(previous_manifest)["annotate"]
    assert side["respond"]["planned_output_tokens"] > 0 and side["respond"]["output_tokens"] > 0
    assert "Plan and actual" in [title for title, *_ in sections(report)]


def _api_config(repo_root: Path, tmp_path: Path, prices: dict) -> Path:
    def api(data):
        data["models"] = {"api": {"engine": "openai", "model": "some-model", "prompt_style": "chat",
                                  "openai": {"base_url": "http://127.0.0.1:9/v1"}}}
        for role in every_role(data):
            role["model"] = "api"
        data["plan"] = {"prices": prices}

    return _config(repo_root, tmp_path, "api", api)


def _plan_cli(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synth.cli", "plan", str(config), "--json"],
                          capture_output=True, text=True, timeout=300)


def test_api_cost_follows_the_configured_prices(repo_root: Path, tmp_path: Path):
    result = _plan_cli(_api_config(repo_root, tmp_path, {"api": {"input_per_mtok": 0.5, "output_per_mtok": 2.0}}))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    model = plan["models"]["api"]
    expected = model["prompt_tokens"] / 1e6 * 0.5 + model["output_tokens"] / 1e6 * 2.0
    assert model["cost_usd"] == round(expected, 2) and model["cost_usd"] > 0
    assert model["gpu_hours"] is None and plan["totals"]["cost_usd"] == model["cost_usd"]
    judge_roles = [plan["roles"][r] for r in ("judge-answer", "judge-behaviour")]
    # prompt tokens come from the rendered judge template: far longer than its output
    assert all(r["prompt_tokens"] > r["output_tokens"] for r in judge_roles)


def test_a_bad_plan_table_exits_2_naming_the_field(repo_root: Path, tmp_path: Path):
    unknown = _plan_cli(_api_config(repo_root, tmp_path, {"nosuch": {"input_per_mtok": 1, "output_per_mtok": 1}}))
    assert unknown.returncode == 2 and "plan.prices.nosuch" in unknown.stderr, unknown.stderr
    negative = _plan_cli(_api_config(repo_root, tmp_path, {"api": {"input_per_mtok": -1, "output_per_mtok": 1}}))
    assert negative.returncode == 2 and "plan.prices.api.input_per_mtok" in negative.stderr, negative.stderr
