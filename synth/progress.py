"""A running stage you can watch: live progress on the terminal, a line in build.log every
30 s, and each stage's requests and tokens for the manifest.

Two parts with one job each:

- `Tally`, a small Ray actor (no CPU) that counts what the engines answered, per stage:
  requests expected (sent to a model; cache hits are counted apart, they cost nothing),
  requests answered, prompt and output tokens. `count_answers` runs in the same Ray Data
  operator as the engine's results (fused with the cache writer), so it counts batches as
  they stream, on whichever node answered them.
- `StageProgress`, on the driver, for one stage: a thread that reads the tally twice a
  second and draws a tqdm bar on the terminal (requests done / expected, requests/s,
  output tokens/s, ETA, and the plan's estimate for the stage), and writes a progress
  line to build.log every `LOG_EVERY_S` seconds. Where the terminal is not a TTY (cron,
  CI) there is no bar and the line goes to the terminal as well. Stages that send no
  request show the rows written so far instead.

The counts are taken as batches finish; a Ray task that is retried (a lost worker) is
counted again, so under retries the figures are an upper bound. Row accounting stays the
runner's (exact); these are throughput figures.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import pandas as pd
import ray
from tqdm import tqdm

from synth.terminal import FILE_ONLY, terminal_handler, terminal_stream

log = logging.getLogger("synth")

# a progress line in build.log this often (SYNTH_PROGRESS_EVERY_S: seconds)
LOG_EVERY_S = float(os.environ.get("SYNTH_PROGRESS_EVERY_S", "30"))
DRAW_EVERY_S = 0.5  # the terminal bar's refresh

_COUNTS = ("expected", "cached", "answered", "prompt_tokens", "completion_tokens")


@ray.remote(num_cpus=0)
class _TallyActor:
    def __init__(self) -> None:
        self.stages: dict[str, dict[str, int]] = {}

    def add(self, stage: str, **counts: int) -> None:
        s = self.stages.setdefault(stage, dict.fromkeys(_COUNTS, 0))
        for k, v in counts.items():
            s[k] += int(v)

    def get(self, stage: str) -> dict[str, int]:
        return dict(self.stages.get(stage) or dict.fromkeys(_COUNTS, 0))


class Tally:
    """The driver's handle on the counting actor (started on first use, stopped by `close`)."""

    def __init__(self) -> None:
        self._actor: Any = None

    @property
    def actor(self) -> Any:
        if self._actor is None:
            self._actor = _TallyActor.remote()
        return self._actor

    def expect(self, stage: str, sent: int, cached: int) -> None:
        ray.get(self.actor.add.remote(stage, expected=sent, cached=cached))

    def counting(self, answered: Any, stage: str) -> Any:
        """`answered` (a Ray dataset of engine results) with every batch counted as it passes."""
        return answered.map_batches(count_answers, fn_kwargs={"tally": self.actor, "stage": stage},
                                    batch_format="pandas")

    def get(self, stage: str) -> dict[str, int]:
        if self._actor is None:
            return dict.fromkeys(_COUNTS, 0)
        return ray.get(self._actor.get.remote(stage))

    def close(self) -> None:
        if self._actor is not None:
            ray.kill(self._actor)
            self._actor = None


def count_answers(batch: pd.DataFrame, tally: Any, stage: str) -> pd.DataFrame:
    """Ray Data UDF: count one batch of engine results (waits for the count, so a finished
    stage's tally is complete when the driver reads it)."""
    if len(batch):
        tokens = {k: int(pd.to_numeric(batch[k]).fillna(0).sum()) if k in batch else 0
                  for k in ("prompt_tokens", "completion_tokens")}
        ray.get(tally.add.remote(stage, answered=len(batch), **tokens))
    return batch


def _isatty(stream: Any) -> bool:
    """A terminal a bar can be drawn on (a pty of 0 columns, as some CI runners give, is not)."""
    try:
        return bool(stream is not None and stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0)
    except (ValueError, OSError):  # closed, or no size
        return False


class _AboveTheBar:
    """A terminal stream whose writes go above the live bars (tqdm.write), not through them."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _k(n: float) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else f"{n:.0f}"


class StageProgress:
    """Watch one stage while it runs (a context manager around its run and write).

    `planned`: the plan's estimate for this stage (`requests`, `output_tokens`), or None.
    `rows_total`: rows expected out when known (a stage that does not fan out), else None.
    """

    def __init__(self, stage: str, tally: Tally, planned: dict[str, Any] | None = None,
                 rows_total: int | None = None) -> None:
        self.stage, self.tally, self.planned, self.rows_total = stage, tally, planned or {}, rows_total
        self.rows = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: tqdm | None = None
        self._handler: Any = None
        self._stream: Any = None

    # --- driver side --------------------------------------------------------------

    def add_rows(self, n: int) -> None:
        """Rows the runner has written (output, rejects, side outputs)."""
        self.rows += n

    def __enter__(self) -> StageProgress:
        self.started = time.monotonic()
        stream = terminal_stream()
        if _isatty(stream):
            self._bar = tqdm(total=None, desc=f"  {self.stage}", unit=" req", file=stream, leave=False,
                             dynamic_ncols=True, mininterval=DRAW_EVERY_S, smoothing=0.1)
            self._handler = terminal_handler()
            self._stream = self._handler.stream
            self._handler.stream = _AboveTheBar(self._stream)  # log lines print above the bar
        self._thread = threading.Thread(target=self._watch, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.close()
            self._handler.stream = self._stream

    def summary(self) -> dict[str, Any]:
        """What the stage sent and spent, for the manifest (beside the plan's estimate)."""
        counts = self.tally.get(self.stage)
        seconds = max(time.monotonic() - self.started, 1e-9)
        return {
            "prompt_tokens": counts["prompt_tokens"],
            "output_tokens": counts["completion_tokens"],
            "requests_per_s": round(counts["answered"] / seconds, 3),
            "output_tokens_per_s": round(counts["completion_tokens"] / seconds, 1),
            "plan": {k: self.planned[k] for k in ("requests", "output_tokens") if k in self.planned},
        }

    # --- the watching thread ---------------------------------------------------------

    def _watch(self) -> None:
        last_line = time.monotonic()
        # without a bar there is nothing to draw: the tally is read only when a line is due
        while not self._stop.wait(DRAW_EVERY_S if self._bar is not None else LOG_EVERY_S):
            try:
                counts = self.tally.get(self.stage)
            except Exception:  # noqa: BLE001 - a progress display never fails a build
                continue
            if self._bar is not None:
                self._draw(counts)
            if time.monotonic() - last_line >= LOG_EVERY_S:
                last_line = time.monotonic()
                extra = {FILE_ONLY: True} if self._bar is not None else {}
                log.info("%s", self.line(counts), extra=extra)

    def _draw(self, counts: dict[str, int]) -> None:
        bar = self._bar
        assert bar is not None
        if counts["expected"]:
            bar.unit = " req"
            if bar.total != counts["expected"]:
                bar.total = counts["expected"]
            elapsed = max(time.monotonic() - self.started, 1e-9)
            post = f"{_k(counts['completion_tokens'] / elapsed)} out tok/s"
            if counts["cached"]:
                post += f", {counts['cached']} cached"
            if self.planned.get("requests"):
                post += f", plan {self.planned['requests']} req"
            bar.set_postfix_str(post, refresh=False)
            bar.update(counts["answered"] - bar.n)  # tqdm's rate and ETA follow its updates
        else:
            bar.unit = " rows"
            bar.total = self.rows_total
            bar.update(self.rows - bar.n)

    def line(self, counts: dict[str, int]) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"progress {self.stage}:"]
        if counts["expected"]:
            done, expected = counts["answered"], counts["expected"]
            rate = done / elapsed if elapsed else 0.0
            parts.append(f"{done}/{expected} requests ({100 * done / expected:.0f}%),")
            parts.append(f"{rate:.2f} req/s, {counts['completion_tokens'] / elapsed:.0f} out tok/s,")
            if counts["cached"]:
                parts.append(f"{counts['cached']} from the cache,")
            eta = (expected - done) / rate if rate else None
            parts.append(f"{_duration(elapsed)} elapsed" + (f", ETA {_duration(eta)}" if eta is not None else ""))
        else:
            total = f"/{self.rows_total}" if self.rows_total is not None else ""
            parts.append(f"{self.rows}{total} rows written, {_duration(elapsed)} elapsed")
        if self.planned.get("requests"):
            parts.append(f"(plan: {self.planned['requests']} requests, "
                         f"{_k(self.planned.get('output_tokens', 0))} output tokens)")
        return " ".join(parts)
