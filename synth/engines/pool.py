"""EnginePool: the build's loaded models, one engine per model name, and when they close.

A loaded model holds its GPUs (or CPUs) until closed, and the next model may need them,
so the runner starts the models the coming stages need ahead of their first use (`start`,
`synth.runner.models_started`) and closes the others (`release`), keeping one a later stage
uses again where a coming stage runs it together with the next stage's models
(`synth.runner.models_kept`).

An engine closes in the background: vLLM's shutdown waits ~5 s for its engine processes
to exit (on CPU they never do by themselves and are killed at that deadline), and the
build need not wait for it; `close` waits for every engine still closing.
"""

from __future__ import annotations

import logging
import threading

from synth.config import PipelineConfig
from synth.engines import Engine, make_engine

log = logging.getLogger("synth")


class EnginePool:
    def __init__(self, config: PipelineConfig, *, dry_run: bool = False):
        self.config = config
        self.dry_run = dry_run
        self.engines: dict[str, Engine] = {}
        self._closing: list[threading.Thread] = []

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
        """Close the engines of models not in `keep` (in the background: `wait_closed`)."""
        for name in [n for n in self.engines if n not in keep]:
            log.info("closing engine %s", name)
            closing = threading.Thread(target=_close, args=(name, self.engines.pop(name)),
                                       name=f"close {name}", daemon=True)
            closing.start()
            self._closing.append(closing)

    def wait_closed(self) -> None:
        """Wait until every engine released so far has closed."""
        while self._closing:
            self._closing.pop().join()

    def close(self) -> None:
        self.release(keep=set())
        self.wait_closed()


def _close(name: str, engine: Engine) -> None:
    try:
        engine.close()
    except Exception:  # the build's output does not depend on it: say so, go on
        log.warning("engine %s did not close cleanly", name, exc_info=True)
