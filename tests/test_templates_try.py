"""`synth templates try` (issue 30, item 4): a scenario's templates tried on a few element
combinations with the stand-in engine; a scorecard and a sample printed, nothing written into
any build, bad input refused with exit 2 before anything runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synth.cli import app


def _tree(path: Path) -> dict[str, int]:
    """Every file under `path` with its modification time: what a run may not change."""
    return {str(p): p.stat().st_mtime_ns for p in path.rglob("*")} if path.exists() else {}


def _try_dirs() -> set[str]:
    return {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("synth-templates-try-")}


@pytest.fixture
def untouched(repo_root: Path):
    """Asserts after the test that builds/ is as it was and no temporary directory was left."""
    builds, dirs = _tree(repo_root / "builds"), _try_dirs()
    yield
    assert _tree(repo_root / "builds") == builds
    assert _try_dirs() == dirs


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def _run(*args: str):
    return CliRunner().invoke(app, ["templates", "try", *args])


def test_try_prints_a_scorecard_and_a_sample(ray_session, repo_root, untouched):
    result = _run("hate_abuse", "--config", str(repo_root / "pipelines/demo.yaml"), "--n", "6", "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.output
    # 3 subcategories × (1 harmful + 1 benign call): one scorecard row per subcategory and kind
    assert "templates try: hate_abuse, 3 subcategories: 6 element combinations" in out
    assert "## Scorecard" in out and "## Sample of the judged questions" in out
    table = [_cells(line) for line in out.splitlines() if line.startswith("| hate_abuse.")]
    assert sorted((row[0], row[1].split("(")[1].rstrip(")")) for row in table) == sorted(
        (f"hate_abuse.{kind}", sub) for kind in ("harmful", "benign")
        for sub in ("humiliation", "hatred", "hostility_aggression"))
    sample = out.split("## Sample of the judged questions")[1]
    assert "| harmful |" in sample and "| benign |" in sample


def test_try_one_subcategory_with_answers(ray_session, repo_root, untouched):
    result = _run("privacy_property", "personal_data", "--config", str(repo_root / "pipelines/demo.yaml"),
                  "--n", "2", "--answers", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = _cells(next(line for line in lines if line.startswith("| template |")))
    table = [dict(zip(header, _cells(line))) for line in lines if line.startswith("| privacy_property.")]
    assert sorted(row["template"] for row in table) == ["privacy_property.benign", "privacy_property.harmful"]
    assert all(row["subcategory"].endswith("(personal_data)") for row in table)
    # with answers the pairs are measured (judge disagreement); there is no corpus: nothing is exported
    for row in table:
        assert row["disagreement"] != "–" and row["corpus"] == "–"


@pytest.mark.parametrize("args, problem", [
    (["no_such_scenario"], "unknown scenario 'no_such_scenario'"),
    (["hate_abuse", "no_such_subcategory"], "unknown subcategory 'no_such_subcategory' of scenario 'hate_abuse'"),
    (["hate_abuse", "personal_data"], "(it is one of 'privacy_property')"),
    (["hate_abuse", "--n", "0"], "--n must be at least 1"),
])
def test_bad_input_exits_2_and_writes_nothing(repo_root, untouched, args, problem):
    result = _run(*args, "--config", str(repo_root / "pipelines/demo.yaml"), "--dry-run")
    assert result.exit_code == 2, result.output
    assert problem in result.output
