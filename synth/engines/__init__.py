"""LLM engines behind one interface (see `base.py`). Real engines import lazily."""

from __future__ import annotations

from synth.config import ModelSpec
from synth.engines.base import (
    REQUEST_COLUMNS,
    RESULT_COLUMNS,
    VERDICT_SCHEMA,
    VERDICT_SCHEMA_JSON,
    Engine,
    request_row,
    request_seed,
)

__all__ = [
    "REQUEST_COLUMNS", "RESULT_COLUMNS", "VERDICT_SCHEMA", "VERDICT_SCHEMA_JSON",
    "Engine", "make_engine", "request_row", "request_seed",
]


def make_engine(name: str, spec: ModelSpec, *, dry_run: bool = False) -> Engine:
    """The engine for model `name`. `dry_run` swaps every model for the stand-in."""
    if dry_run or spec.engine == "standin":
        from synth.engines.standin import StandInEngine

        return StandInEngine(name, spec)
    if spec.engine == "vllm":
        from synth.engines.vllm_ray import VLLMEngine

        return VLLMEngine(name, spec)
    if spec.engine == "openai":
        from synth.engines.openai_compat import OpenAICompatEngine

        return OpenAICompatEngine(name, spec)
    raise ValueError(f"unknown engine {spec.engine!r}")
