"""What a stage is and what it may use.

A stage has a name, the stage whose output it reads (`input`), and a `run` that
turns that dataset into one output dataset. Output rows with a non-empty
`reject_reason` become the stage's rejects; rows whose reason is listed in
`diverted` go to a side output instead (the judges' disagreements → `hard`).
The runner (`synth.build`) writes everything as parquet and does the counting,
so stages stay pure transformations.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import ray.data

from synth.config import PipelineConfig, Role
from synth.engines import Engine, make_engine
from synth.templates import Catalog

log = logging.getLogger("synth")


@dataclass
class StageContext:
    config: PipelineConfig
    catalog: Catalog
    dry_run: bool = False
    engines: dict[str, Engine] = field(default_factory=dict)
    # tokens per stage, filled by `generate`; read by the manifest
    usage: dict[str, dict[str, int]] = field(default_factory=dict)

    def engine(self, model_name: str) -> Engine:
        if model_name not in self.engines:
            self.engines[model_name] = make_engine(model_name, self.config.models[model_name], dry_run=self.dry_run)
        return self.engines[model_name]

    def prompt_style(self, role: Role) -> str:
        return self.config.models[role.model].prompt_style

    def generate(self, requests_by_role: list[tuple[Role, ray.data.Dataset]]) -> ray.data.Dataset:
        """Send each role's requests to its model; roles sharing a model go in one pass."""
        by_model: dict[str, list[ray.data.Dataset]] = {}
        for role, ds in requests_by_role:
            by_model.setdefault(role.model, []).append(ds)
        results = []
        for model_name, parts in by_model.items():
            requests = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
            results.append(self.engine(model_name).generate(requests))
        return results[0].union(*results[1:]) if len(results) > 1 else results[0]


class Stage(ABC):
    name: ClassVar[str]
    input: ClassVar[str | None]  # the stage whose rows this one reads
    diverted: ClassVar[dict[str, str]] = {}  # reject reason -> side output name
    # A stage that fans out (one call → many questions, one question → several
    # answers) creates rows; any other stage must account for every input row
    # as output, reject or diverted, and the runner fails the build if not.
    fans_out: ClassVar[bool] = False
    reject_only_columns: ClassVar[tuple[str, ...]] = ()  # dropped from kept rows, kept in rejects

    @abstractmethod
    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        """Transform the input rows; mark drops with `reject_reason`."""


def empty_like(columns: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series([], dtype=v) for k, v in columns.items()})
