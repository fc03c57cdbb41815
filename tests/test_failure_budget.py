"""Failed requests: permanent ones (a 4xx) become rejects, transient ones (429, 5xx, timeouts)
leave their rows pending for the next run; the build goes on until more than
`--max-failures` have failed (checked while a stage streams), then exits 1 keeping its
finished stages. Refused credentials stop the build at once.

Real `synth build` subprocesses against the stub OpenAI-compatible server
(tests/openai_stub_server.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from openai_stub_server import StubServer
from test_secrets import GENERATOR, JUDGE_B, KEY, KEY_ENV, secret_config


def build(config: Path, out: Path, budget: int, key: str = KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYNTH_NUM_CPUS": "2", KEY_ENV: key}
    env.pop("SYNTH_FAULT", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "synth.cli", "build", str(config), "--out", str(out),
                           "--max-failures", str(budget)], env=env, capture_output=True, text=True, timeout=900)


def test_over_budget_stops_the_stage_while_it_streams_and_a_bigger_budget_finishes(repo_root: Path,
                                                                                  tmp_path: Path):
    out = tmp_path / "out"
    with StubServer() as server:
        server.fail_where(lambda b: b.get("max_tokens") == GENERATOR and b["seed"] % 4 == 0, 400, "prompt rejected")
        config = secret_config(repo_root, tmp_path, server.url)
        over = build(config, out, budget=1)
        assert over.returncode == 1, over.stderr[-3000:]
        assert "failed after retries (budget --max-failures 1)" in over.stderr
        assert "Traceback" not in over.stderr
        # stopped inside the stage (not after it): no finished queries, no export
        assert (out / "stages/elements/_SUCCESS.json").exists()
        assert not (out / "stages/queries/_SUCCESS.json").exists()
        assert not (out / "manifest.json").exists()
        answered = [f for f in (out / "cache/requests").rglob("*.parquet")]
        assert answered  # what was answered before the stop is kept

        within = build(config, out, budget=1000)
        assert within.returncode == 0, within.stderr[-3000:]
        failing = {r["body"]["seed"] for r in server.requests
                   if r["body"].get("max_tokens") == GENERATOR and r["body"]["seed"] % 4 == 0}
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["queries"]["requests"]["cached"] > 0  # answers from the stopped run are not paid for twice
    # the generator's failed requests (queries and augment): each is one reject
    generator_stages = ("queries", "augment")
    assert sum(n for name in generator_stages for r, n in stages[name]["rejected"].items()
               if r.endswith("llm_error")) == len(failing)
    rejects = pd.concat(pd.read_parquet(p) for name in generator_stages
                        for p in (out / "stages" / name / "rejects").glob("*.parquet"))
    assert rejects["reject_reason"].str.startswith("llm_error: HTTP 400").sum() == len(failing)


def test_transient_failures_are_sent_again_by_the_next_run_which_then_equals_a_clean_build(repo_root: Path,
                                                                                          tmp_path: Path):
    from test_resume import export_bytes

    out, clean = tmp_path / "out", tmp_path / "clean"
    with StubServer() as server:
        outage = {"on": True}
        # A 503 for some of the generator's and one judge's requests (each also fails its retry).
        server.fail_where(lambda b: outage["on"] and b.get("max_tokens") == GENERATOR and b["seed"] % 5 == 0, 503,
                          "overloaded")
        server.fail_where(lambda b: outage["on"] and b.get("max_tokens") == JUDGE_B and b["seed"] % 4 == 0, 503,
                          "overloaded")
        config = one_scenario(secret_config(repo_root, tmp_path, server.url))
        first = build(config, out, budget=1000)
        assert first.returncode == 0, first.stderr[-3000:]
        manifest = json.loads((out / "manifest.json").read_text())
        pending = {s["name"]: s["pending"] for s in manifest["stages"]}
        assert pending["queries"] > 0 and pending["annotate"] > 0, pending
        assert "pending" in first.stdout
        failed_bodies = [json.dumps(r["body"], sort_keys=True) for r in server.requests
                         if _failed(server, r)]
        answered_bodies = {json.dumps(r["body"], sort_keys=True) for r in server.requests} - set(failed_bodies)

        outage["on"] = False
        seen = len(server.requests)
        second = build(config, out, budget=0)
        assert second.returncode == 0, second.stderr[-3000:]
        again = [json.dumps(r["body"], sort_keys=True) for r in server.requests[seen:]]
        # every failed request is sent again, once; nothing answered before is sent again
        assert set(failed_bodies) <= set(again)
        assert len(again) == len(set(again))
        assert not answered_bodies & set(again)
        manifest = json.loads((out / "manifest.json").read_text())
        assert all(s["pending"] == 0 for s in manifest["stages"])
        assert {s["name"]: s["why"] for s in manifest["stages"]}["queries"].endswith("pending requests")

        fresh = build(config, clean, budget=0)
        assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert export_bytes(out) == export_bytes(clean)


def one_scenario(config: Path) -> Path:
    """The config with one scenario (three builds in one test: keep each small)."""
    import yaml

    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["scenarios"] = ["hate_abuse"]
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return config


def _failed(server: StubServer, request: dict) -> bool:
    """Whether the stub answered this request with an injected failure (both tries of a 503 match)."""
    body = request["body"]
    return body.get("seed") is not None and (
        (body.get("max_tokens") == GENERATOR and body["seed"] % 5 == 0)
        or (body.get("max_tokens") == JUDGE_B and body["seed"] % 4 == 0))


def test_a_wrong_api_key_stops_the_build_in_its_first_batches(repo_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    with StubServer() as server:
        server.fail_where(lambda b: True, 401, "invalid api key")
        config = secret_config(repo_root, tmp_path, server.url)
        result = build(config, out, budget=1000, key="sk-wrong")
        sent = len(server.requests)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "refused the credentials (HTTP 401" in result.stderr and "api_key_env" in result.stderr
    assert "Traceback" not in result.stderr
    assert sent <= 4, sent  # two connections' first requests, not the stage's 16 calls
    assert not (out / "stages/queries/_SUCCESS.json").exists()
