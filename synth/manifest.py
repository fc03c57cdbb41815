"""The build's manifest.json: what was built, from what, and what every stage did."""

from __future__ import annotations

from typing import Any

import synth
from synth.config import PipelineConfig
from synth.stage_writer import StageRecord
from synth.stages.base import StageContext
from synth.templates import Catalog


def build_manifest(config: PipelineConfig, catalog: Catalog, ctx: StageContext, records: list[StageRecord],
              export_counts: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    return {
        "name": config.name,
        "synth_version": synth.__version__,
        "config_hash": config.fingerprint(),
        "seed": config.seed,
        "dry_run": dry_run,
        "engine": "standin" if dry_run else "real",
        "models": {name: {"engine": "standin" if dry_run else spec.engine, "model": spec.model,
                          "prompt_style": spec.prompt_style} for name, spec in config.models.items()},
        "roles": {
            "generator": config.roles.generator.name,
            "responders": [r.name for r in config.roles.responders],
            "judges": [r.name for r in config.roles.judges],
        },
        "scenarios": {k: {"template_hash": s.hash, "subcategories": len(s.template.subcategories)}
                      for k, s in sorted(catalog.scenarios.items())},
        "stages": [{k: v for k, v in r.__dict__.items() if k != "signature"} for r in records],
        # rows whose request failed transiently: the next run of the same command sends them again
        "pending": sum(r.pending for r in records),
        "export": export_counts,
    }
