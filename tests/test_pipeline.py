"""The pipeline as a value (issue 29, item 1): checked as a graph when built, run by the real
runner, and a stage added from outside the package with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
import ray.data

from synth.pipeline import PIPELINE, Pipeline, PipelineError
from synth.rows import REJECT_COLUMN
from synth.stages.base import Stage, StageContext


class Numbers(Stage):
    """Toy source: rows 0..n-1."""

    name = "numbers"
    fans_out = True
    columns = ("id", "n", REJECT_COLUMN)

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        return ray.data.from_items([{"id": f"r{i}", "n": i, REJECT_COLUMN: ""} for i in range(10)])


class Squares(Stage):
    name = "squares"
    reads = ("n",)
    columns = ("id", "n", "square", REJECT_COLUMN)

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        return rows.map_batches(lambda b: b.assign(square=b["n"] * b["n"], **{REJECT_COLUMN: ""}),
                                batch_format="pandas")


class DropOdd(Stage):
    """A filter: odd squares are rejects."""

    name = "drop_odd"
    reads = ("square",)

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        return rows.map_batches(
            lambda b: b.assign(**{REJECT_COLUMN: ["odd" if s % 2 else "" for s in b["square"]]}),
            batch_format="pandas")


class NoOp(Stage):
    """A filter stage that keeps every row (added from outside the package)."""

    name = "no_op"
    reads: ClassVar[tuple[str, ...]] = ("id",)

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        return rows.map_batches(lambda b: b.assign(**{REJECT_COLUMN: ""}), batch_format="pandas")


def test_a_pipeline_is_checked_as_a_graph_when_built():
    assert Pipeline([Numbers(), Squares(), DropOdd()]).names == ["numbers", "squares", "drop_odd"]
    with pytest.raises(PipelineError, match="'squares' reads 'nope', which is not a stage"):
        Pipeline([Numbers(), Squares()], inputs={"squares": "nope"})
    with pytest.raises(PipelineError, match="cycle: .*squares.*drop_odd.*squares|cycle: .*drop_odd.*squares.*drop_odd"):
        Pipeline([Numbers(), Squares(), DropOdd()], inputs={"squares": "drop_odd"})
    with pytest.raises(PipelineError, match="'drop_odd' reads columns \\['square'\\].*its input is 'numbers'"):
        Pipeline([Numbers(), DropOdd(), Squares()])
    with pytest.raises(PipelineError, match="appears twice"):
        Pipeline([Numbers(), Squares(), Squares()])
    # the list's order is kept where the edges allow it, and fixed where they do not
    p = Pipeline([Numbers(), DropOdd(), Squares()], inputs={"drop_odd": "squares", "squares": "numbers"})
    assert p.names == ["numbers", "squares", "drop_odd"]
    assert p.final.name == "drop_odd" and p.input_of("drop_odd") == "squares"
    assert p.writer_of("square").name == "squares"


def test_the_shipped_pipeline_is_valid_and_the_exports_read_its_final_stage():
    assert PIPELINE.final.name == "decontaminate"
    assert PIPELINE.writer_of("judgements").name == "annotate"
    assert PIPELINE.input_of("respond") == "converse" and PIPELINE.input_of("converse") == "obfuscate"


def test_toy_stages_run_through_the_real_runner(ray_session, repo_root: Path, tmp_path: Path):
    from synth.build import prepare
    from synth.runner import run_stages
    from synth.lock import BuildLock

    config, catalog = prepare(repo_root / "pipelines/demo.yaml")
    out = tmp_path / "build"
    out.mkdir()
    ctx = StageContext(config=config, catalog=catalog, dry_run=True, cache_root=out / "cache" / "requests")
    pipeline = Pipeline([Numbers(), Squares(), DropOdd()])
    with BuildLock(out) as lock:
        records = run_stages(ctx, out, None, lock, pipeline=pipeline)
        again = run_stages(ctx, out, None, lock, pipeline=pipeline)
    ctx.close()
    assert [(r.name, r.rows_in, r.rows_out, r.rejected) for r in records] == [
        ("numbers", 0, 10, {}), ("squares", 10, 10, {}), ("drop_odd", 10, 5, {"odd": 5})]
    rows = pd.read_parquet(out / "stages" / "drop_odd" / "rows")
    assert sorted(rows["square"]) == [0, 4, 16, 36, 64]
    assert all(r.reused for r in again)


def _with_no_op(p: Pipeline) -> Pipeline:
    stages = list(p.stages)
    at = [s.name for s in stages].index("dedup_pairs")
    return Pipeline([*stages[:at], NoOp(), *stages[at:]])  # the one line


def test_a_stage_added_from_outside_runs_and_the_report_and_plan_include_it(ray_session, repo_root: Path,
                                                                           tmp_path: Path):
    from synth.build import run_build
    from synth.plan import make_plan
    from synth.build import prepare

    import yaml

    # the demo on two scenarios (a dry run: the stand-in engine)
    demo = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    demo.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"),
                scenarios=["privacy_property", "hate_abuse"])
    config_path = tmp_path / "two.yaml"
    config_path.write_text(yaml.safe_dump(demo, allow_unicode=True), encoding="utf-8")
    pipeline = _with_no_op(PIPELINE)
    manifest = run_build(config_path, tmp_path / "b", dry_run=True, pipeline=pipeline)
    names = [s["name"] for s in manifest["stages"]]
    assert names[names.index("filter_pairs") + 1] == "no_op" and names[names.index("no_op") + 1] == "dedup_pairs"
    no_op = manifest["stages"][names.index("no_op")]
    assert no_op["rows_in"] == no_op["rows_out"] == manifest["stages"][names.index("filter_pairs")]["rows_out"]
    assert manifest["export"]["corpus_rows"] > 0
    report = (tmp_path / "b" / "report" / "report.json").read_text(encoding="utf-8")
    assert '"no_op"' in report
    # no stage keeps state between runs: a build leaves every stage object as it found it
    assert {s.name: vars(s) for s in pipeline.stages} == {s.name: {} for s in pipeline.stages}
    hard = manifest["stages"][names.index("filter_pairs")]["diverted"]
    assert set(hard) <= {"hard"}  # side outputs come from the config (Stage.side_outputs)
    config, catalog = prepare(config_path)
    planned = make_plan(config, catalog, pipeline=pipeline)
    assert "no_op" in [s["name"] for s in planned["stages"]]
