"""Which loaded models a build keeps between stages, and that the others are closed.

A loaded model holds GPUs (or CPUs) until closed: kept while the stages that follow use it
(no reload per stage), closed as soon as the next stage that sends requests uses other
models (so their replicas can be placed). Uses a recording engine, no model.
"""

from __future__ import annotations

from pathlib import Path

from synth.build import STAGES, _models_needed_next
from synth.config import load_config
from synth.engines import Engine
from synth.stages.base import StageContext

ROOT = Path(__file__).resolve().parent.parent


def _needed_by_stage() -> dict[str, set[str]]:
    config, _, _ = load_config(ROOT / "pipelines/libra-stage1.yaml")
    return {stage.name: _models_needed_next(config, STAGES[i:]) for i, stage in enumerate(STAGES)}


def test_the_generator_stays_loaded_from_elements_through_augment():
    needed = _needed_by_stage()
    for stage in ("elements", "queries", "augment"):
        assert needed[stage] == {"qwen2.5-32b"}, stage


def test_responders_are_loaded_from_the_filters_before_respond_and_judges_after():
    needed = _needed_by_stage()
    responders = {"qwen2.5-7b", "llama3.1-8b", "gemma2-9b"}
    for stage in ("filter_questions", "dedup_questions", "respond"):
        assert needed[stage] == responders, stage
    # the generator model judges too: closed for respond, loaded again for annotate
    assert needed["annotate"] == {"qwen2.5-32b", "gemma2-27b"}
    assert needed["filter_pairs"] == needed["dedup_pairs"] == set()


class RecordingEngine(Engine):
    """Stand-in for a loaded model: records close() calls, generates nothing."""

    closed: list[str] = []

    def generate(self, requests):  # pragma: no cover - never called here
        raise AssertionError("not used")

    def close(self) -> None:
        RecordingEngine.closed.append(self.name)


def test_release_engines_closes_exactly_the_models_not_kept():
    config, _, _ = load_config(ROOT / "pipelines/libra-stage1.yaml")
    ctx = StageContext(config=config, catalog=None)  # type: ignore[arg-type]
    for name in ("qwen2.5-32b", "qwen2.5-7b", "gemma2-9b"):
        ctx.engines[name] = RecordingEngine(name, config.models[name])
    RecordingEngine.closed = []
    ctx.release_engines(keep={"qwen2.5-7b", "gemma2-9b", "llama3.1-8b"})
    assert RecordingEngine.closed == ["qwen2.5-32b"]
    assert sorted(ctx.engines) == ["gemma2-9b", "qwen2.5-7b"]
    ctx.release_engines(keep=set())
    assert sorted(RecordingEngine.closed) == ["gemma2-9b", "qwen2.5-32b", "qwen2.5-7b"] and not ctx.engines
