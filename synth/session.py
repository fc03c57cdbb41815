"""The Ray session a command runs in, and where its log lines go.

`init_ray` starts (or joins, with RAY_ADDRESS) Ray once per process with synth's settings;
`log_to_file` sends synth's log lines, and Ray's own notices, to a build's `build.log`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import ray
import ray.data

log = logging.getLogger("synth")
ray_log = logging.getLogger("synth.ray")  # Ray's own notices: build.log only (see log_to_file)
ray_log.propagate = False


def init_ray() -> None:
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if not address:
            # "local": a Ray of its own, even where `ray start` (or a test's cluster) left its
            # address in /tmp/ray, which ray.init() would join; a cluster is joined by RAY_ADDRESS
            address = "local"
            kwargs["num_cpus"] = int(os.environ.get("SYNTH_NUM_CPUS", os.cpu_count() or 2))
        ray.init(address=address, **kwargs)
    _raylet_messages_to_log()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = False
    # Ray Data's DataSourceV2 parquet reader starts a pool of footer-reading actors for every
    # read_parquet; a build reads its stage and cache parquet dozens of times, and each actor is a
    # new worker process (seconds of imports on a small machine). The V1 reader reads the footers
    # in its read tasks, which reuse pooled workers.
    ctx.use_datasource_v2 = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _raylet_messages_to_log() -> None:
    """Ray prints the raylet's notices (e.g. "N PYTHON worker processes have been started")
    on the driver's stdout, where a newcomer reads them as errors: send them to build.log."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "_synth", False):
        return

    def to_log(data: dict, ignore_prefix: bool = False) -> None:
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                ray_log.info("raylet: %s", line)
            return
        original(data, ignore_prefix)

    to_log._synth = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_log


def log_to_file(path: Path) -> None:
    """synth's log lines and Ray's notices into `path` (once per path)."""
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path.resolve():
            return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    for old in [h for h in ray_log.handlers if isinstance(h, logging.FileHandler)]:
        ray_log.removeHandler(old)
    ray_log.addHandler(handler)
    ray_log.setLevel(logging.INFO)
