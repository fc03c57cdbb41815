"""Everything a build reads, loaded and validated before anything is written."""

from __future__ import annotations

from pathlib import Path

from synth.config import PipelineConfig, load_config
from synth.filters import build_filters
from synth.templates import load_catalog


def prepare(config_path: Path, templates: Path | None = None, seeds: Path | None = None):
    """Load and validate everything a build reads, before anything is written."""
    config, templates_dir, seeds_dir = load_config(config_path)
    catalog = load_catalog(templates or templates_dir, seeds or seeds_dir, only=config.scenarios or None)
    build_filters(config.filters.questions, "filters.questions")
    build_filters(config.filters.pairs, "filters.pairs")
    for tactic in config.augment.tactics:
        catalog.tactic(tactic)
    for i, role in enumerate(config.roles.responders):
        if role.persona is not None:
            catalog.persona(role.persona, i)
    for role in config.roles.judges:
        catalog.rubric(role.rubric)
    if config.roles.question_judges and catalog.question_judge is None:
        from synth.errors import BadInput

        raise BadInput(f"roles.question_judges is set but {templates or templates_dir}/shared/question_judge.yaml "
                       "is missing")
    return config, catalog


def check_eval_sets(config: PipelineConfig) -> None:
    """Read every evaluation file of `decontaminate.against` once: BadInput (exit 2) naming a
    missing, empty or malformed one before the build writes anything."""
    if config.decontaminate.against:
        from synth.dedup.decontaminate import load_eval_sets

        load_eval_sets(config.decontaminate.against, config.decontaminate.fields)
