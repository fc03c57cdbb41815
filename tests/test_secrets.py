"""The API key of an `engine: openai` model never lands in a build's files or output.

End to end: a real `synth build` subprocess (not --dry-run) against the stub server
(tests/openai_stub_server.py), with the key in an env var. The stub answers some
requests of every role with an error that quotes the Authorization header back, as a
hostile or misconfigured proxy does; those errors are recorded (rejects/, the report),
so the engine must scrub the key from them. Then no file under the build directory,
and neither stdout nor stderr, holds the key, while the server did receive it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from synth.config import ModelSpec, Role, Sampling
from synth.engines import make_engine, request_row
from synth.errors import BadInput, BuildFailed
from config_edits import every_role
from openai_stub_server import StubServer

KEY = "sk-synth-secret-0f9e8d7c"
KEY_ENV = "SYNTH_TEST_SECRET"
# The key, its header form, and its first and last 12 characters (what a cut through it would leave).
FORBIDDEN = (KEY, f"Bearer {KEY}", KEY[:12], KEY[-12:])
ECHO = "invalid key {authorization}"

# Sampling max_tokens per role, so the stub can tell the roles apart.
GENERATOR, RESPONDERS, JUDGE_B = 40, (30, 31), 21


def secret_config(repo_root: Path, tmp_path: Path, url: str) -> Path:
    """Three small scenarios, every role on the stub (completion style: one question per call)."""
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    data["templates"], data["seeds"] = str(repo_root / "templates"), str(repo_root / "seeds")
    data["scenarios"] = ["hate_abuse", "ethics_morality", "physical_mental_health"]
    data["models"] = {"stub": {
        "engine": "openai", "model": "stub-model", "prompt_style": "completion",
        "openai": {"base_url": url, "api_key_env": KEY_ENV, "max_concurrency": 2, "timeout_s": 10.0,
                   "max_retries": 1, "backoff_s": 0.01, "backoff_max_s": 0.05,
                   "breaker_cooldown_s": 0.1, "breaker_cooldown_max_s": 0.2},
    }}
    roles = data["roles"]
    roles["generator"]["sampling"]["max_tokens"] = GENERATOR
    for role, max_tokens in zip(roles["responders"], RESPONDERS):
        role["sampling"]["max_tokens"] = max_tokens
    roles["judges"][0]["sampling"]["max_tokens"] = 20
    roles["judges"][1]["sampling"]["max_tokens"] = JUDGE_B
    roles.pop("question_judges", None)  # the stub writes no verdicts to read: the questions pass unjudged
    # single questions: the stub's user turns would fail the question filters
    roles.pop("user_turn_writer", None)
    data.pop("dialogues", None)
    for role in every_role(data):
        role["model"] = "stub"
    data["augment"]["share"] = 0.5
    # The stub writes no question marks or sentences: keep only the emptiness checks.
    data["filters"] = {"questions": [{"name": "non_empty", "params": {"fields": ["question"]}}],
                       "pairs": [{"name": "non_empty", "params": {"fields": ["question", "response"]}}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def secret_build(repo_root: Path, tmp_path_factory):
    """One real build; the stub echoes the key in some errors of every role (400: permanent, a reject;
    500: retried, then pending)."""
    tmp = tmp_path_factory.mktemp("secret")
    out = tmp / "out"
    with StubServer() as server:
        server.fail_where(lambda b: b.get("max_tokens") == GENERATOR and b["seed"] % 4 == 0, 400, ECHO)
        server.fail_where(lambda b: b.get("max_tokens") in RESPONDERS and b["seed"] % 4 == 1, 500,
                          "upstream said: " + ECHO)
        server.fail_where(lambda b: b.get("max_tokens") == JUDGE_B and b["seed"] % 3 == 0, 400, ECHO)
        env = {**os.environ, "SYNTH_NUM_CPUS": "2", KEY_ENV: KEY}
        env.pop("SYNTH_FAULT", None)
        env.pop("RAY_ADDRESS", None)
        result = subprocess.run(
            [sys.executable, "-m", "synth.cli", "build", str(secret_config(repo_root, tmp, server.url)),
             "--out", str(out), "--max-failures", "1000"],
            env=env, capture_output=True, text=True, timeout=900,
        )
        requests, failures = list(server.requests), list(server.failures)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result, requests, failures


def _leaks(text: str) -> list[str]:
    return [f for f in FORBIDDEN if f in text]


def test_the_server_received_the_key_and_echoed_it(secret_build):
    _, _, requests, failures = secret_build
    assert requests and all(r["headers"].get("Authorization") == f"Bearer {KEY}" for r in requests)
    echoed = [f for f in failures if KEY in f["message"]]
    assert {f["status"] for f in echoed} == {400, 500}, failures


def test_echoed_errors_are_recorded_scrubbed(secret_build):
    """The hostile error text did reach rejects/, pending/ and the report, with the key replaced by ***."""
    out, _, _, _ = secret_build
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    failed_stages = {s["name"] for s in manifest["stages"] if any(r.endswith("llm_error") for r in s["rejected"])}
    assert {"queries", "annotate"} <= failed_stages, failed_stages
    assert next(s for s in manifest["stages"] if s["name"] == "respond")["pending"] > 0
    files = sorted((out / "rejects").glob("*.parquet")) + sorted((out / "stages").glob("*/pending/*.parquet"))
    reasons = pd.concat([pd.read_parquet(p) for p in files])["reject_reason"]
    scrubbed = reasons[reasons.str.contains("invalid key Bearer ***", regex=False)]
    assert len(scrubbed) >= 3, reasons.value_counts()
    assert reasons.str.contains("llm_error: HTTP 400").any()
    # the 500s were retried, then left pending for the next run
    assert reasons.str.contains("pending_request: HTTP 500").any() and reasons.str.contains("after 2 attempts").any()
    report = (out / "report/report.json").read_text(encoding="utf-8")
    assert "judge_failed: llm_error: HTTP 400" in report and "invalid key Bearer ***" in report


def test_no_file_in_the_build_holds_the_key(secret_build):
    out, _, _, _ = secret_build
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.relative_to(out).parts[0] for p in files}
    assert {"manifest.json", "build.log", "report", "rejects", "stages", "cache", "corpus", "sft", "inputs"} <= names
    leaks = {}
    for path in files:
        raw = path.read_bytes()
        found = [f for f in FORBIDDEN if f.encode() in raw]
        if path.suffix == ".parquet":  # pages may be compressed: check the decoded values too
            found += _leaks(json.dumps(pq.read_table(path).to_pylist(), ensure_ascii=False, default=str))
        if found:
            leaks[str(path.relative_to(out))] = found
    assert not leaks, leaks
    assert KEY_ENV in (out / "inputs/config.yaml").read_text(encoding="utf-8")  # the env var's name is recorded


def test_no_key_on_stdout_or_stderr(secret_build):
    _, result, _, _ = secret_build
    assert "done:" in result.stdout
    assert not _leaks(result.stdout) and not _leaks(result.stderr)


# -- fast: the engine's batch callable in this process (no Ray) ----------------------------


def _spec(url: str, **options) -> ModelSpec:
    opts = {"base_url": url, "api_key_env": KEY_ENV, "max_concurrency": 1, "timeout_s": 5.0, "max_retries": 1,
            "backoff_s": 0.01, "backoff_max_s": 0.05, **options}
    return ModelSpec(engine="openai", model="stub-model", prompt_style="chat", openai=opts)


def _run(spec: ModelSpec, n: int = 1) -> list[dict]:
    from synth.engines.openai_compat import OpenAIRequester

    role = Role(name="resp", model="m", sampling=Sampling(max_tokens=16))
    rows = [request_row(request_id=f"r{i}", task="respond", prompt=f"问题{i}", role=role, base_seed=1)
            for i in range(n)]
    return OpenAIRequester(**make_engine("m", spec).requester_kwargs())(pd.DataFrame(rows)).to_dict("records")


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with StubServer() as s:
        yield s


@pytest.mark.parametrize("status, attempts", [(400, 1), (500, 2)])
def test_error_echoing_the_key_is_scrubbed(server, status: int, attempts: int):
    server.fail_next(attempts, status=status, message=ECHO)
    out = _run(_spec(server.url), n=2)
    assert len(server.failures) == attempts and KEY in server.failures[0]["message"]
    error = out[0]["error"]
    assert f"HTTP {status}" in error and "invalid key Bearer ***" in error, error
    assert not _leaks(error)
    assert out[1]["error"] == "" and out[1]["text"]


def test_key_split_by_the_error_snippet_cut_is_scrubbed(server):
    """The error body is cut at 300 characters; a key straddling the cut must not leave its first half."""
    template = "x" * 255 + " {authorization} trailing text"
    server.fail_next(1, status=400, message=template)
    error = _run(_spec(server.url))[0]["error"]
    sent = json.dumps({"error": {"message": server.failures[0]["message"], "type": "injected"}})
    assert sent.index(KEY) < 300 < sent.index(KEY) + len(KEY)  # the premise: a raw cut would split the key
    assert "Bearer ***" in error and not _leaks(error), error


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_fail_the_build_at_once_without_echoing_the_key(server, status: int):
    server.fail_where(lambda body: True, status=status, message=ECHO)
    with pytest.raises(BuildFailed, match=f"refused the credentials \\(HTTP {status}") as caught:
        _run(_spec(server.url, max_concurrency=2), n=20)
    assert "api_key_env" in str(caught.value) and "Bearer ***" in str(caught.value)
    assert not _leaks(str(caught.value))
    assert len(server.requests) <= 3  # the rest of the batch is not sent


def test_key_with_surrounding_whitespace_is_sent_stripped(server, monkeypatch):
    """A key read from a file often ends in a newline; sent as is, the HTTP client's error quotes it."""
    monkeypatch.setenv(KEY_ENV, f"{KEY}\n")
    out = _run(_spec(server.url))
    assert out[0]["error"] == "" and out[0]["text"]
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("value", [f"{KEY}\x01", f"sk-synth {KEY}", f"{KEY}é"], ids=["control", "space", "non-ascii"])
def test_unusable_key_is_bad_input_without_echoing_it(server, monkeypatch, value: str):
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(BadInput, match=KEY_ENV) as caught:
        make_engine("m", _spec(server.url)).requester_kwargs()
    assert not _leaks(str(caught.value))
    assert not server.requests
