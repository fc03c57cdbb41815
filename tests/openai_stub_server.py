"""A tiny OpenAI-compatible HTTP server for engine tests (stdlib only).

It speaks just enough of the protocol: `POST /v1/chat/completions`,
`POST /v1/completions` and `GET /v1/models`. Answers are deterministic functions
of (prompt, seed); when the request asks for JSON (a `response_format`, vLLM's
`structured_outputs`, SGLang's `regex` or `json_schema`) the answer is a valid guard verdict `{"答案": ..., "分析": ...}`.

Faults are injected on command, so tests can check retries and dead endpoints:

    server = StubServer().start()
    server.fail_next(2, status=429)      # next 2 requests get HTTP 429
    server.fail_next(1, status=401, message="invalid key {authorization}")
                                         # an error body quoting the request's Authorization
                                         # header, as a hostile or misconfigured proxy does
    server.fail_where(lambda body: body["seed"] % 3 == 0, status=500)
                                         # every request whose JSON body matches fails
    server.delay_next(1, seconds=2.0)    # next request answers after 2 s
    server.stop_after(3)                 # serve 3 more requests, then close the port
    server.fail_next(5, status=429, retry_after=1.5)
                                         # Retry-After header on injected failures (429: "0")
    server.latency = 0.05                # every answer takes this long (so in-flight counts mean something)
    server.url                           # "http://127.0.0.1:<port>/v1"
    server.requests                      # every request seen: path, headers, body
    server.failures                      # every injected failure: status, message sent
    server.log                           # per request: arrival time (monotonic), requests in flight
                                         # at arrival (itself included), status, tokens (usage total)

Run alone for manual poking: `python tests/openai_stub_server.py --port 8011`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

_WORDS = "我们应该遵守法律并保护自己和他人的安全这个问题需要谨慎对待建议咨询专业人士获取帮助"


def _digest(*parts: Any) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def stub_text(prompt: str, seed: Any, max_tokens: int) -> str:
    """Deterministic Chinese-looking text: one character per 'token'."""
    d = _digest(prompt, seed)
    n = max(1, min(int(max_tokens), 8 + d[0] % 24))
    return "".join(_WORDS[(d[i % len(d)] + i) % len(_WORDS)] for i in range(n))


def stub_verdict(prompt: str, seed: Any) -> str:
    d = _digest(prompt, seed)
    label = "不安全" if d[0] % 2 else "安全"
    return json.dumps({"答案": label, "分析": f"桩服务判定该回答{label}。"}, ensure_ascii=False)


class _Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        # ("status", code, message template | None, retry_after | None) | ("delay", seconds)
        self.queue: deque[tuple[Any, ...]] = deque()
        # (predicate on the request body, code, message template | None, retry_after | None):
        # checked when the queue is empty
        self.rules: list[tuple[Callable[[dict[str, Any]], bool], int, str | None, float | None]] = []
        self.stop_after: int | None = None


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # client timed out and left
            pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/").endswith("/v1/models"):
            self._send(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        stub = self.server.stub
        with stub._lock:
            stub._in_flight += 1
            entry = {"t": time.monotonic(), "in_flight": stub._in_flight, "status": None, "tokens": 0}
            stub.log.append(entry)
        self._entry = entry
        try:
            self._post()
        finally:
            with stub._lock:
                stub._in_flight -= 1

    def _post(self) -> None:
        if self.server.stub._closed:  # a kept-alive connection outliving close(): hang up
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send(400, {"error": {"message": "body is not JSON"}})
            return
        stub = self.server.stub
        with stub._lock:
            stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        fault = None
        with stub._faults.lock:
            if stub._faults.queue:
                fault = stub._faults.queue.popleft()
            else:
                fault = next((("status", code, message, retry_after)
                              for matches, code, message, retry_after in stub._faults.rules if matches(body)), None)
        if fault and fault[0] == "status":
            self._fail(fault[1], fault[2], fault[3])
            return
        if fault and fault[0] == "delay":
            time.sleep(fault[1])
        elif stub.latency:
            time.sleep(stub.latency)
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/chat/completions"):
            self._chat(body)
        elif path.endswith("/completions"):
            self._completion(body)
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if stub._count_served():
            self.close_connection = True

    def _fail(self, status: int, template: str | None, retry_after: float | None = None) -> None:
        message = (template or "injected {status}").replace("{status}", str(status))
        message = message.replace("{authorization}", self.headers.get("Authorization", ""))
        with self.server.stub._lock:
            self.server.stub.failures.append({"status": status, "message": message})
        if retry_after is None and status == 429:
            retry_after = 0
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        self._entry["status"] = status
        self._send(status, {"error": {"message": message, "type": "injected"}}, headers)

    def _answer(self, prompt: str, body: dict[str, Any]) -> tuple[str, str, int]:
        seed = body.get("seed")
        max_tokens = int(body.get("max_tokens") or 16)
        fmt = body.get("response_format") or {}
        # a judge: JSON asked for as OpenAI does, as vLLM's server does, or as SGLang does
        if fmt.get("type") in ("json_schema", "json_object") or any(
                body.get(k) for k in ("structured_outputs", "regex", "json_schema")):
            text = stub_verdict(prompt, seed)
            return text, "stop", len(text)
        text = stub_text(prompt, seed, max_tokens)
        return text, ("length" if len(text) >= max_tokens else "stop"), len(text)

    def _chat(self, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        text, finish, n = self._answer(prompt, body)
        self._entry.update(status=200, tokens=len(prompt) + n)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if body.get("logprobs") and not self.server.stub.no_logprobs:
            choice["logprobs"] = {"content": stub_logprobs(text, int(body.get("top_logprobs") or 1))}
        self._send(200, {
            "id": "chatcmpl-stub", "object": "chat.completion", "model": body.get("model", ""),
            "choices": [choice],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n},
        })

    def _completion(self, body: dict[str, Any]) -> None:
        prompt = str(body.get("prompt", ""))
        text, finish, n = self._answer(prompt, body)
        self._entry.update(status=200, tokens=len(prompt) + n)
        self._send(200, {
            "id": "cmpl-stub", "object": "text_completion", "model": body.get("model", ""),
            "choices": [{"index": 0, "text": text, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n},
        })


def stub_logprobs(text: str, top: int) -> list[dict[str, Any]]:
    """OpenAI chat `logprobs.content` for `text`, one token per character: at a verdict's label
    the two labels' first characters as alternatives, P(不安全) 0.8 or 0.2 on the label's side."""
    import math

    label_at = text.find('"答案": "') + len('"答案": "') if '"答案": "' in text else -1
    content = []
    for i, c in enumerate(text):
        if i == label_at and c in "不安":
            p = 0.8 if c == "不" else 0.2
            alternatives = [{"token": "不", "logprob": math.log(p)}, {"token": "安", "logprob": math.log(1 - p)}]
        else:
            alternatives = [{"token": c, "logprob": 0.0}]
        chosen = next(a for a in alternatives if a["token"] == c)
        content.append({"token": c, "logprob": chosen["logprob"], "top_logprobs": alternatives[:max(top, 1)]})
    return content


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stub: "StubServer"


class StubServer:
    """An OpenAI-compatible server on 127.0.0.1 in a background thread."""

    def __init__(self, port: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.stub = self
        self._faults = _Faults()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False  # refuse work (new requests are hung up on)
        self._socket_closed = False
        self.requests: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.latency = 0.0
        self.no_logprobs = False  # a server that ignores `logprobs` (as some hosted APIs do)
        self._in_flight = 0

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "StubServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the listening socket (the port then refuses connections)."""
        self._closed = True
        self._close_socket()

    def __enter__(self) -> "StubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- fault injection ---------------------------------------------------------
    def fail_next(self, k: int, status: int = 429, message: str | None = None,
                  retry_after: float | None = None) -> None:
        """The next k requests get HTTP `status`; `message` is the error text, in which
        `{authorization}` becomes the request's Authorization header and `{status}` the code;
        `retry_after` is sent as the Retry-After header (a 429 without it says 0)."""
        with self._faults.lock:
            self._faults.queue.extend([("status", status, message, retry_after)] * k)

    def fail_where(self, matches: Callable[[dict[str, Any]], bool], status: int = 500,
                   message: str | None = None, retry_after: float | None = None) -> None:
        """Every later request whose JSON body satisfies `matches` gets HTTP `status` (see fail_next)."""
        with self._faults.lock:
            self._faults.rules.append((matches, status, message, retry_after))

    def delay_next(self, k: int, seconds: float) -> None:
        with self._faults.lock:
            self._faults.queue.extend([("delay", seconds)] * k)

    def stop_after(self, k: int) -> None:
        """Serve k more successful requests, then close the port."""
        with self._faults.lock:
            self._faults.stop_after = k
        if k <= 0:
            self.close()

    def _count_served(self) -> bool:
        """Count a served request; True when that was the last one before closing."""
        with self._faults.lock:
            if self._faults.stop_after is None:
                return False
            self._faults.stop_after -= 1
            done = self._faults.stop_after <= 0
            if done:
                self._faults.stop_after = None
        if done:
            self._closed = True  # later requests on kept-alive connections get hung up on
            # shutdown() blocks until serve_forever returns: never call it from a handler thread.
            threading.Thread(target=self._close_socket, daemon=True).start()
        return done

    def _close_socket(self) -> None:
        with self._lock:
            if self._socket_closed:
                return
            self._socket_closed = True
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    server = StubServer(args.port).start()
    print(f"stub OpenAI server on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
