"""Fault injection for the crash-and-resume tests (off unless SYNTH_FAULT is set).

`SYNTH_FAULT=<point>[@<n>]` makes the build SIGKILL its own driver process the
n-th time (default first) execution reaches the named point, the way a pre-empted
job dies: no cleanup, no finally blocks. Points:

    stage_start:<stage>       before a stage runs (between stages)
    round:<stage>:<k>         before round k (0-based) of a stage of several rounds (the
                              judges; a conversation's turns, synth/stages/dialogue.py)
    mid_write:<stage>         after a stage's rows are written, before its rejects
    cache_shard_written       after an engine batch's answers reach the request cache
                              (i.e. during generation; counted by shards on disk)

`SYNTH_WORKER_FAULT=<point>[@<n>]` instead SIGKILLs the Ray *worker* process that reaches
the point for the n-th time (as a node loss or the OOM killer would), once per build:
the first kill creates the file named by `SYNTH_WORKER_FAULT_ONCE` (required), so the
task Ray retries runs through. Points:

    shard_written:<stage>     inside the writer task, after a batch's shards are written
"""

from __future__ import annotations

import os
import signal

DRIVER_PID = "SYNTH_DRIVER_PID"
_reached: dict[str, int] = {}  # per process: how often each worker fault point was reached


def fault_point(name: str, count: int = 1) -> None:
    spec = os.environ.get("SYNTH_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point == name and count >= int(nth or 1):
        os.kill(int(os.environ.get(DRIVER_PID, os.getpid())), signal.SIGKILL)


def worker_fault_point(name: str) -> None:
    spec = os.environ.get("SYNTH_WORKER_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] < int(nth or 1):
        return
    try:
        os.close(os.open(os.environ["SYNTH_WORKER_FAULT_ONCE"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
