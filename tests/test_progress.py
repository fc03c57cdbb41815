"""A build you can watch (issue 29, item 5): a live bar on a terminal, a progress line in
build.log, and each stage's requests and tokens in the manifest beside the plan.

The bar is drawn on a real pseudo-terminal (pty, 100 columns) and read back from its other
end; the counts go through the real Tally actor in the test's Ray session.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import struct
import termios
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth import progress
from synth.cli import _setup_logging
from synth.progress import StageProgress, Tally
from synth.terminal import FILE_ONLY, terminal_handler


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured(monkeypatch):
    """synth's log records (what build.log gets), and the progress line every 0.2 s."""
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    handler = _Lines()
    logging.getLogger("synth").addHandler(handler)
    yield handler
    logging.getLogger("synth").removeHandler(handler)


def _pty_terminal(columns: int):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    return master, open(slave, "w", buffering=1, encoding="utf-8", closefd=True)


def _read(master: int) -> str:
    chunks = []
    os.set_blocking(master, False)
    while True:
        try:
            chunk = os.read(master, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_stage_on_a_terminal_shows_a_live_bar_and_logs_its_line_to_the_file_only(ray_session, captured):
    master, terminal = _pty_terminal(100)
    _setup_logging(terminal)
    tally = Tally()
    try:
        with StageProgress("annotate", tally, {"requests": 12, "output_tokens": 900}) as watch:
            tally.expect("annotate", sent=10, cached=2)
            ray_session.get(tally.actor.add.remote("annotate", answered=3, prompt_tokens=300, completion_tokens=60))
            logging.getLogger("synth").info("a line printed while the bar shows")
            time.sleep(1.5)
            summary = watch.summary()
        shown = _read(master)
    finally:
        _setup_logging()
        terminal.close()
        os.close(master)
        tally.close()
    # the bar: requests done / expected, the cache hits and the plan's estimate
    assert "annotate:" in shown and "3/10" in shown and "2 cached" in shown and "plan 12 req" in shown, shown
    assert "a line printed while the bar shows" in shown
    # build.log's line says the same, and is kept off the terminal (the bar is there)
    lines = [r for r in captured.records if r.getMessage().startswith("progress annotate:")]
    assert lines, [r.getMessage() for r in captured.records]
    assert all(getattr(r, FILE_ONLY, False) for r in lines)
    assert "3/10 requests (30%)" in lines[-1].getMessage()
    assert "2 from the cache" in lines[-1].getMessage() and "plan: 12 requests, 900 output tokens" in lines[-1].getMessage()
    assert "progress annotate" not in shown
    assert summary["prompt_tokens"] == 300 and summary["output_tokens"] == 60
    assert summary["plan"] == {"requests": 12, "output_tokens": 900}


def test_without_a_terminal_the_progress_line_goes_to_the_terminal_too(ray_session, captured, tmp_path: Path):
    stream = open(tmp_path / "terminal.txt", "w", encoding="utf-8")  # cron, CI: not a TTY
    _setup_logging(stream)
    tally = Tally()
    try:
        with StageProgress("dedup_questions", tally, rows_total=40) as watch:
            watch.add_rows(25)
            time.sleep(0.8)
    finally:
        _setup_logging()
        stream.close()
        tally.close()
    assert terminal_handler() is not None
    lines = [r.getMessage() for r in captured.records if r.getMessage().startswith("progress dedup_questions:")]
    assert lines and "25/40 rows written" in lines[-1]
    assert not any(getattr(r, FILE_ONLY, False) for r in captured.records)
    assert "progress dedup_questions: 25/40 rows written" in (tmp_path / "terminal.txt").read_text(encoding="utf-8")


def test_the_manifest_has_each_llm_stages_tokens_and_rate_beside_the_plan(demo_build):
    out, manifest = demo_build
    stages = {s["name"]: s for s in manifest["stages"]}
    planned = {s["name"]: s for s in manifest["plan"]["stages"]}
    for name in ("queries", "augment", "respond", "annotate"):
        s = stages[name]
        assert s["plan"] == {"requests": planned[name]["requests"], "output_tokens": planned[name]["output_tokens"]}
        assert s["prompt_tokens"] > 0 and s["output_tokens"] > 0 and s["requests_per_s"] > 0, s
    assert stages["dedup_questions"]["prompt_tokens"] == 0
    assert stages["dedup_questions"]["plan"] == {"requests": 0, "output_tokens": 0}
    # every request of a first build was sent once and cached once: the stages' tokens are the cache's
    cached = sum(sum(pq.read_table(f, columns=["completion_tokens"]).column(0).to_pylist())
                 for f in (out / "cache" / "requests").rglob("*.parquet"))
    assert sum(s["output_tokens"] for s in manifest["stages"]) == cached
