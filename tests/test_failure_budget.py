"""The failure budget: failed LLM requests become rejects while the build goes on, until
more than `--max-failures` have failed; then the build exits 1 and keeps its finished stages.

A real `synth build` against the stub OpenAI-compatible server (tests/openai_stub_server.py),
which answers a quarter of the generator's requests with HTTP 401 (not retried).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from openai_stub_server import StubServer
from test_secrets import GENERATOR, KEY, KEY_ENV, secret_config


def build(config: Path, out: Path, budget: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYNTH_NUM_CPUS": "2", KEY_ENV: KEY}
    env.pop("SYNTH_FAULT", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "synth.cli", "build", str(config), "--out", str(out),
                           "--max-failures", str(budget)], env=env, capture_output=True, text=True, timeout=900)


def test_over_budget_exits_1_keeping_finished_stages_then_a_bigger_budget_finishes(repo_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    with StubServer() as server:
        server.fail_where(lambda b: b.get("max_tokens") == GENERATOR and b["seed"] % 4 == 0, 401, "no such key")
        config = secret_config(repo_root, tmp_path, server.url)
        over = build(config, out, budget=1)
        assert over.returncode == 1, over.stderr[-3000:]
        assert "failed after retries (budget --max-failures 1)" in over.stderr
        # the stage that failed requests is finished and kept, with the failures as rejects
        assert (out / "stages/queries/_SUCCESS.json").exists()
        rejects = pd.concat(pd.read_parquet(p) for p in (out / "stages/queries/rejects").glob("*.parquet"))
        failed = rejects[rejects["reject_reason"].str.startswith("llm_error: HTTP 401")]
        assert len(failed) >= 2
        assert not (out / "manifest.json").exists()  # no export from a failed build

        sent_before = len(server.requests)
        within = build(config, out, budget=1000)
        assert within.returncode == 0, within.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    queries = next(s for s in manifest["stages"] if s["name"] == "queries")
    assert queries["reused"]  # not paid for twice
    assert sum(n for r, n in queries["rejected"].items() if r.endswith("llm_error")) == len(failed)
    assert len(server.requests) > sent_before  # the later stages ran
