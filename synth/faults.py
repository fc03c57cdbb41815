"""Fault injection for the crash-and-resume tests (off unless SYNTH_FAULT is set).

`SYNTH_FAULT=<point>[@<n>]` makes the build SIGKILL its own driver process the
n-th time (default first) execution reaches the named point, the way a pre-empted
job dies: no cleanup, no finally blocks. Points:

    stage_start:<stage>       before a stage runs (between stages)
    mid_write:<stage>         after a stage's rows are written, before its rejects
    cache_shard_written       after an engine batch's answers reach the request cache
                              (i.e. during generation; counted by shards on disk)
"""

from __future__ import annotations

import os
import signal

DRIVER_PID = "SYNTH_DRIVER_PID"


def fault_point(name: str, count: int = 1) -> None:
    spec = os.environ.get("SYNTH_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point == name and count >= int(nth or 1):
        os.kill(int(os.environ.get(DRIVER_PID, os.getpid())), signal.SIGKILL)
