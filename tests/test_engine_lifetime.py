"""Which loaded models a build keeps between stages, and that the others are closed.

A loaded model holds GPUs (or CPUs) until closed: kept while the stages that follow use it
(no reload per stage), closed as soon as the next stage that sends requests uses other
models (so their replicas can be placed), unless a later stage uses it again and a coming stage
runs it beside those models. Uses a recording engine, no model.
"""

from __future__ import annotations

import os

from pathlib import Path

from synth.build import STAGES
from synth.runner import models_kept, models_needed_next, models_started
from synth.config import load_config
from synth.engines import Engine
from synth.engines.pool import EnginePool

ROOT = Path(__file__).resolve().parent.parent


def _needed_by_stage() -> dict[str, set[str]]:
    config, _, _ = load_config(ROOT / "pipelines/libra-stage1.yaml")
    return {stage.name: models_needed_next(config, STAGES[i:]) for i, stage in enumerate(STAGES)}


def test_the_generator_stays_loaded_from_elements_through_augment():
    needed = _needed_by_stage()
    for stage in ("elements", "queries", "augment"):
        assert needed[stage] == {"qwen2.5-32b"}, stage


def test_responders_are_loaded_from_the_filters_before_respond_and_judges_after():
    needed = _needed_by_stage()
    responders = {"qwen2.5-7b", "llama3.1-8b", "gemma2-9b"}
    for stage in ("filter_questions", "dedup_questions", "respond"):
        assert needed[stage] == responders, stage
    # the generator model judges too: closed for respond, loaded again while the responses
    # are filtered, before annotate
    assert needed["filter_responses"] == needed["annotate"] == {"qwen2.5-32b", "gemma2-27b"}
    assert needed["filter_pairs"] == needed["dedup_pairs"] == set()


def test_a_model_idle_between_two_uses_stays_loaded_only_where_a_stage_runs_it_with_the_others():
    # libra-stage1: the 32B generator judges again after respond, but no stage runs it beside the
    # responders: closed for them (they may need its GPUs)
    config, _, _ = load_config(ROOT / "pipelines/libra-stage1.yaml")
    kept = {stage.name: models_kept(config, STAGES[i:]) for i, stage in enumerate(STAGES)}
    needed = _needed_by_stage()
    assert all(kept[name] >= needed[name] for name in kept)
    for stage in ("filter_questions", "dedup_questions", "respond"):
        assert kept[stage] == needed[stage] and "qwen2.5-32b" not in kept[stage], stage
    # the demo: Gemma writes, then only Qwen judges the questions, then respond runs both: Gemma
    # stays loaded through judge_questions instead of being loaded again
    demo, _, _ = load_config(ROOT / "pipelines/demo.yaml")
    kept = {stage.name: models_kept(demo, STAGES[i:]) for i, stage in enumerate(STAGES)}
    needed = {stage.name: models_needed_next(demo, STAGES[i:]) for i, stage in enumerate(STAGES)}
    assert needed["judge_questions"] == {"qwen-1.5b"}
    assert kept["filter_questions"] == kept["judge_questions"] == {"qwen-1.5b", "gemma-270m"}
    # after respond no stage uses Gemma: closed
    assert kept["filter_responses"] == kept["annotate"] == {"qwen-1.5b"}


class RecordingEngine(Engine):
    """Stand-in for a loaded model: records close() calls, generates nothing."""

    closed: list[str] = []

    def generate(self, requests):  # pragma: no cover - never called here
        raise AssertionError("not used")

    def close(self) -> None:
        RecordingEngine.closed.append(self.name)


def test_a_model_starts_early_only_where_it_stays_loaded_until_its_first_use():
    demo, _, _ = load_config(ROOT / "pipelines/demo.yaml")
    started = {stage.name: models_started(demo, STAGES[i:]) for i, stage in enumerate(STAGES)}
    # the demo's Qwen loads from the first stage on, while Gemma writes the questions
    assert started["elements"] == started["queries"] == {"gemma-270m", "qwen-1.5b"}
    assert started["filter_responses"] == {"qwen-1.5b"}
    # libra-stage1: the responders would be closed again while the 32B generator writes, and the
    # judge model while the responders answer: each starts only a stage ahead, as before
    config, _, _ = load_config(ROOT / "pipelines/libra-stage1.yaml")
    started = {stage.name: models_started(config, STAGES[i:]) for i, stage in enumerate(STAGES)}
    assert started == _needed_by_stage()


def test_release_engines_closes_exactly_the_models_not_kept():
    config, _, _ = load_config(ROOT / "pipelines/libra-stage1.yaml")
    pool = EnginePool(config)
    for name in ("qwen2.5-32b", "qwen2.5-7b", "gemma2-9b"):
        pool.engines[name] = RecordingEngine(name, config.models[name])
    RecordingEngine.closed = []
    pool.release(keep={"qwen2.5-7b", "gemma2-9b", "llama3.1-8b"})
    assert RecordingEngine.closed == ["qwen2.5-32b"]
    assert sorted(pool.engines) == ["gemma2-9b", "qwen2.5-7b"]
    pool.close()
    assert sorted(RecordingEngine.closed) == ["gemma2-9b", "qwen2.5-32b", "qwen2.5-7b"] and not pool.engines


def test_a_build_starts_each_model_while_the_stages_before_its_use_run(ray_session, tmp_path, monkeypatch):
    """The generator starts loading when `elements` runs, not when `queries` first sends;
    a rerun that reuses every stage starts no model at all."""
    import yaml

    from synth.build import run_build
    from synth.engines.standin import StandInEngine

    raw = yaml.safe_load((ROOT / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(ROOT / "templates"), seeds=str(ROOT / "seeds"), scenarios=["physical_mental_health"])
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "build"

    events: list[tuple[str, str, set[str]]] = []  # (call, model, stages written so far)

    def written() -> set[str]:
        return {p.name for p in (out / "stages").glob("*")} if (out / "stages").exists() else set()

    def start(self):
        events.append(("start", self.name, written()))

    generate = StandInEngine.generate

    def recording_generate(self, requests):
        events.append(("generate", self.name, written()))
        return generate(self, requests)

    monkeypatch.setattr(StandInEngine, "start", start)
    monkeypatch.setattr(StandInEngine, "generate", recording_generate)
    run_build(config, out, dry_run=True)
    # before any stage was written, while elements runs: Gemma (the generator) and Qwen too, which
    # first judges the questions and stays loaded from now on (converse and respond run both)
    assert events[:2] == [("start", "gemma-270m", set()), ("start", "qwen-1.5b", set())]
    first_generate = next(i for i, e in enumerate(events) if e[0] == "generate")
    assert "elements" in events[first_generate][2]
    # asked before each of the 11 stages up to annotate (the last that sends requests): both
    # models for the 9 stages up to respond; qwen alone for filter_responses and annotate
    assert sum(e[0] == "start" for e in events) == 9 * 2 + 2
    assert [e[1] for e in events if e[0] == "start"][-1] == "qwen-1.5b"

    events.clear()
    run_build(config, out, dry_run=True)
    assert events == []
    # the build's environment (its build.log for the engines) ends with it: a later in-process
    # requester must not log into a build directory that may be gone
    from synth.engines.pushback import BUILD_LOG_ENV

    assert BUILD_LOG_ENV not in os.environ
