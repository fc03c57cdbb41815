"""A stage's signature: a hash of what its output depends on (see `synth.stages.base.Stage`).

`stage_inputs` gives one hash per kind of input (code, engine, config slice, templates, models,
the input stage's output); the runner keeps them in the stage's marker, so a rerun reuses a
stage whose signature is the same and says which input changed when it is not (`why_run`).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import synth
from synth.request_cache import model_identity

if TYPE_CHECKING:
    from synth.stages.base import Stage, StageContext


def stage_inputs(stage: Stage, ctx: StageContext, upstream_output: str) -> dict[str, str]:
    """What a stage's output depends on, one hash per kind of input (the marker keeps them,
    so a rerun can say which one changed). Throughput settings and paths are not in it."""
    config = ctx.config
    roles = {}
    for role in stage.roles(config):
        spec = config.models[role.model]
        spec = spec.model_copy(update={"engine": "standin"}) if ctx.dry_run else spec
        roles[role.name] = {"role": role.model_dump(mode="json"), "model": model_identity(role.model, spec)}
    return {
        "code": synth.__version__,
        "engine": "standin" if ctx.dry_run else "real",
        "config": digest(stage.depends(config)),
        "templates": digest(stage.templates_used(ctx.catalog, config)),
        "models": digest(roles),
        "input": upstream_output,
    }


def why_run(marker: dict | None, signature: str, inputs: dict[str, str]) -> str:
    if not marker:
        return "no finished output"
    if marker.get("signature") == signature:
        pending = marker.get("record", {}).get("pending", 0)
        return f"{pending} pending requests" if pending else "reused"
    before = marker.get("inputs") or {}
    changed = [k for k, v in inputs.items() if before.get(k) != v]
    return "changed: " + ", ".join(changed or ["signature"])


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]
