"""OpenAICompatEngine against a real HTTP server on 127.0.0.1 (tests/openai_stub_server.py)."""

from __future__ import annotations

import json
import socket

import pytest

from synth.config import ModelSpec, Role, Sampling
from synth.engines import RESULT_COLUMNS, VERDICT_SCHEMA_JSON, make_engine, request_row
from synth.errors import BadInput
from openai_stub_server import StubServer

KEY = "sk-test-not-a-real-key-1234"


def _spec(url: str, style: str = "chat", **options) -> ModelSpec:
    opts = {"base_url": url, "max_concurrency": 2, "timeout_s": 2.0, "max_retries": 3,
            "backoff_s": 0.01, "backoff_max_s": 0.05,
            # a dead endpoint gives up at once once the breaker opens (tests/test_pushback.py times it)
            "breaker_cooldown_s": 0.05, "breaker_cooldown_max_s": 0.1, "give_up_s": 0.0, **options}
    return ModelSpec(engine="openai", model="stub-model", prompt_style=style, openai=opts)


def _rows(n: int, judge: bool = False) -> list[dict]:
    role = Role(name="judge" if judge else "resp", model="m", sampling=Sampling(max_tokens=32, temperature=0.7))
    return [
        request_row(request_id=f"r{i}", task="judge" if judge else "respond", prompt=f"问题{i}：如何保护个人隐私？",
                    role=role, base_seed=7, system="你是一个助手。", json_schema=VERDICT_SCHEMA_JSON if judge else "")
        for i in range(n)
    ]


def _run(spec: ModelSpec, rows: list[dict]) -> list[dict]:
    """The engine's batch callable on one batch, in this process (fast; no Ray)."""
    import pandas as pd

    from synth.engines.openai_compat import OpenAIRequester

    requester = OpenAIRequester(**make_engine("m", spec).requester_kwargs())
    return requester(pd.DataFrame(rows)).to_dict("records")


def _run_ray(spec: ModelSpec, rows: list[dict]) -> list[dict]:
    """Through Ray Data, as the pipeline runs it."""
    import ray.data

    ds = ray.data.from_items(rows, override_num_blocks=2)
    out = make_engine("m", spec).generate(ds).take_all()
    return sorted(out, key=lambda r: int(r["request_id"][1:]))


@pytest.fixture()
def server():
    with StubServer() as s:
        yield s


def test_through_ray_chat_and_judge_rows_keep_input_columns(ray_session, server, monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_KEY", KEY)
    spec = _spec(server.url, api_key_env="SYNTH_TEST_KEY")
    rows = _rows(3) + [dict(r, request_id=f"r{10 + i}") for i, r in enumerate(_rows(2, judge=True))]
    out = _run_ray(spec, rows)
    assert len(out) == 5
    for got, sent in zip(out, sorted(rows, key=lambda r: int(r["request_id"][1:]))):
        assert {k: got[k] for k in ("request_id", "role", "prompt", "seed", "system")} == \
            {k: sent[k] for k in ("request_id", "role", "prompt", "seed", "system")}
        assert set(RESULT_COLUMNS) <= set(got)
        assert got["error"] == "" and got["text"]
        assert got["finish_reason"] in ("stop", "length") and got["completion_tokens"] > 0
    for got in out[3:]:
        assert json.loads(got["text"])["答案"] in ("安全", "不安全")
    bodies = [r["body"] for r in server.requests]
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert {b["seed"] for b in bodies} == {r["seed"] for r in rows}
    assert all(b["messages"][0] == {"role": "system", "content": "你是一个助手。"} for b in bodies)
    judged = [b for b in bodies if "response_format" in b]
    assert len(judged) == 2 and judged[0]["response_format"]["type"] == "json_schema"
    assert all(r["headers"].get("Authorization") == f"Bearer {KEY}" for r in server.requests)
    described = json.dumps(make_engine("m", spec).describe())
    assert KEY not in described and "SYNTH_TEST_KEY" in described


@pytest.mark.parametrize("mode", ["structured_outputs", "regex", "json_schema", "json_object", "none"])
def test_judges_are_constrained_as_the_server_kind_asks(server, mode):
    """vLLM's server gets the in-process engine's own constraint; SGLang its `regex`; hosted APIs
    `response_format`. Non-judge rows carry none of them."""
    from synth.engines.structured_output import vllm_constraint

    out = _run(_spec(server.url, response_format=mode), _rows(1) + [dict(_rows(1, judge=True)[0], request_id="r9")])
    assert all(r["error"] == "" for r in out)
    bodies = {r["body"]["seed"]: r["body"] for r in server.requests}
    assert len(bodies) == 2
    plain, judged = bodies[out[0]["seed"]], bodies[out[1]["seed"]]
    constraint_keys = {"structured_outputs", "regex", "json_schema", "response_format"}
    assert not constraint_keys & set(plain)
    expected = vllm_constraint(VERDICT_SCHEMA_JSON, 32)
    asked = {k: judged[k] for k in constraint_keys & set(judged)}
    if mode == "structured_outputs":
        assert asked == {"structured_outputs": expected} and "regex" in expected
    elif mode == "regex":
        assert asked == {"regex": expected["regex"]}
    elif mode == "json_schema":
        assert asked["response_format"]["type"] == "json_schema" and set(asked) == {"response_format"}
    elif mode == "json_object":
        assert asked == {"response_format": {"type": "json_object"}}
    else:
        assert asked == {}
    if mode != "none":
        assert json.loads(out[1]["text"])["答案"] in ("安全", "不安全")


def test_completion_style_uses_completions_endpoint(server):
    out = _run(_spec(server.url, style="completion"), _rows(2))
    assert all(r["error"] == "" and r["text"] for r in out)
    assert {r["path"] for r in server.requests} == {"/v1/completions"}
    assert server.requests[0]["body"]["prompt"].startswith("你是一个助手。\n\n问题")
    assert "Authorization" not in server.requests[0]["headers"]


@pytest.mark.parametrize("fault", ["429", "500", "timeout"])
def test_transient_faults_are_retried(server, fault):
    if fault == "timeout":
        server.delay_next(2, seconds=1.5)  # client timeout is 1 s below
    else:
        server.fail_next(2, status=int(fault))
    out = _run(_spec(server.url, max_concurrency=1, timeout_s=1.0), _rows(3))
    assert [r["error"] for r in out] == ["", "", ""]
    assert all(r["text"] for r in out)
    assert len(server.requests) == 5  # 2 failed attempts + 3 successes


def test_client_errors_are_not_retried(server):
    server.fail_next(1, status=400)
    out = _run(_spec(server.url, max_concurrency=1), _rows(2))
    assert "HTTP 400" in out[0]["error"] and out[0]["text"] == "" and out[0]["finish_reason"] == "error"
    assert out[1]["error"] == ""
    assert len(server.requests) == 2


def test_retries_give_up_and_keep_the_row(server):
    server.fail_next(10, status=503)
    out = _run(_spec(server.url, max_concurrency=1, max_retries=2), _rows(1))
    assert out[0]["text"] == "" and "HTTP 503" in out[0]["error"] and "after 3 attempts" in out[0]["error"]


def test_through_ray_dead_endpoint_fails_rows_clearly_and_keeps_done_rows(ray_session, server):
    server.stop_after(2)  # serve two requests, then the port is closed
    out = _run_ray(_spec(server.url, max_concurrency=1), _rows(5))
    assert len(out) == 5
    assert [bool(r["text"]) for r in out[:2]] == [True, True]
    assert all(r["error"] == "" for r in out[:2])
    for r in out[2:]:
        assert r["text"] == "" and r["finish_reason"] == "error"
        assert f"127.0.0.1:{server.port}/v1/chat/completions" in r["error"]
        assert "cannot reach" in r["error"]


def test_closed_port_from_the_start():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _run(_spec(f"http://127.0.0.1:{port}/v1", max_retries=1), _rows(2))
    assert all(f"cannot reach http://127.0.0.1:{port}/v1/chat/completions" in r["error"] for r in out)


def test_missing_api_key_env_is_bad_input(server, monkeypatch):
    monkeypatch.delenv("SYNTH_TEST_KEY_MISSING", raising=False)
    engine = make_engine("m", _spec(server.url, api_key_env="SYNTH_TEST_KEY_MISSING"))
    with pytest.raises(BadInput, match="SYNTH_TEST_KEY_MISSING"):
        engine.requester_kwargs()


def test_describe_hides_credentials_in_url():
    spec = _spec("https://user:secret@api.example.com/v1?key=abc")
    d = make_engine("m", spec).describe()
    assert d["base_url"] == "https://api.example.com/v1"
    assert "secret" not in json.dumps(d) and "abc" not in json.dumps(d)
