"""EnginePool: the build's loaded models, one engine per model name, and when they close.

A loaded model holds its GPUs (or CPUs) until closed, and the next model may need them,
so the runner starts the models the coming stages need ahead of their first use (`start`,
`synth.runner.models_started`) and closes the others (`release`), keeping one a later stage
uses again where a coming stage runs it together with the next stage's models
(`synth.runner.models_kept`).
"""

from __future__ import annotations

import logging

from synth.config import PipelineConfig
from synth.engines import Engine, make_engine

log = logging.getLogger("synth")


class EnginePool:
    def __init__(self, config: PipelineConfig, *, dry_run: bool = False):
        self.config = config
        self.dry_run = dry_run
        self.engines: dict[str, Engine] = {}

    def engine(self, model_name: str) -> Engine:
        """The engine of this model, made on first use (not started: `generate` or `start` does)."""
        if model_name not in self.engines:
            self.engines[model_name] = make_engine(model_name, self.config.models[model_name], dry_run=self.dry_run)
        return self.engines[model_name]

    def start(self, models: set[str]) -> None:
        """Begin loading these models now, so a model loads while the stages before its
        first use run (its GPUs would idle otherwise); already loaded ones are left as is."""
        for name in sorted(models):
            self.engine(name).start()

    def release(self, keep: set[str]) -> None:
        """Close the engines of models not in `keep`."""
        for name in [n for n in self.engines if n not in keep]:
            log.info("closing engine %s", name)
            self.engines.pop(name).close()

    def close(self) -> None:
        self.release(keep=set())
