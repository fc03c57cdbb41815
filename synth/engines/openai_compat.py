"""OpenAICompatEngine: any OpenAI-compatible HTTP server (vllm serve, SGLang, hosted APIs).

Requests go out from one Ray Data actor (`map_batches(..., compute=ActorPoolStrategy(size=1))`) that owns
an `httpx.Client` and a thread pool of `max_concurrency` workers, so the number of
requests in flight to the server never exceeds the configured limit, however the
dataset is split into blocks.

- chat style → `POST {base_url}/chat/completions` with the messages: system, the row's
  `history` (earlier user and assistant turns), the user turn (`chat_messages`);
  completion style → `POST {base_url}/completions` with the raw text (`completion_text`:
  system text, the history as a 用户：/助手： transcript, the prompt).
- Judges (rows with a `json_schema`) are constrained per `openai.response_format`: vLLM's
  `structured_outputs` (the in-process engine's regex), SGLang's `regex`, or `response_format`
  json_schema / json_object, with free-text fields capped to fit `max_tokens`; an
  output cut by `max_tokens` is closed if that parses (see `structured_output`).
- 429, 408, 5xx, timeouts and connection errors are retried with exponential backoff
  and jitter. Other 4xx are not retried.
- Every request takes its turn from one `Pushback` (synth/engines/pushback.py): concurrency
  adapts (halved on 429 or answers far slower than usual, grown again while healthy),
  `Retry-After` pauses the whole requester, optional requests/tokens-per-minute limits,
  and a circuit breaker that stops sending to an endpoint that keeps failing, probes it
  now and then, and resumes when it answers. A 429 does not use up a retry: a request
  waits out throttling for up to `give_up_s`.
- A request that still fails gets `error` set and `text` ""; its row is kept. A
  retryable failure is marked transient (`engines.base.transient`): the row is pending
  and the next run sends it again; any other is permanent (a reject).
- 401 and 403 (a wrong or missing API key) fail the build at once (`BuildFailed`): every
  other request would fail the same way.
  Once the breaker has been open for `give_up_s`, requests fail fast (transient, with an
  error naming the URL) except the breaker's probes, until one succeeds.
- The API key is read from the env var named by `openai.api_key_env` and sent as
  `Authorization: Bearer …`; it never appears in `describe()`, reprs or errors: a
  server or proxy that quotes it back ("invalid key Bearer sk-…") has it replaced by
  `***` before the error text is recorded (rejects/, the report).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from synth.config import OpenAIOptions
from synth.engines.base import RESULT_COLUMNS, Engine, chat_messages, completion_text, transient
from synth.engines.pushback import FAILED, OK, REFUSED, THROTTLED, EndpointDown, Pushback, attach_build_log
from synth.engines.structured_output import close_truncated_json, fit_schema_to_budget, vllm_constraint
from synth.errors import BadInput, BuildFailed
from synth.scoring import from_openai

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Secret:
    """Holds the API key; prints as *** so it cannot leak through a repr or a log line."""

    __slots__ = ("value",)

    def __init__(self, value: str | None):
        self.value = value

    def __repr__(self) -> str:
        return "<secret>" if self.value else "<none>"

    __str__ = __repr__

    def scrub(self, text: str) -> str:
        """`text` with the key replaced by `***` (servers and proxies may quote it in errors)."""
        return text.replace(self.value, "***") if self.value else text


def public_url(url: str) -> str:
    """The URL without user info and query string (they may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def constraint_fields(schema_json: str, mode: str, max_tokens: int) -> dict[str, Any]:
    """The body fields that constrain a judge's output to its `json_schema`, per
    `openai.response_format`:
    - `structured_outputs` (vLLM's server): vLLM's own `structured_outputs`, the same regex or
      JSON the in-process engine uses (`vllm_constraint`). With `json_schema` the server's
      grammar lets the model put whitespace anywhere, and the embedded Qwen judge padded its
      verdicts with newlines until `max_tokens` cut them (a fifth did not parse; BENCHMARKS.md);
    - `regex` (SGLang): the same constraint as SGLang's top-level `regex` (or `json_schema`);
    - `json_schema` (OpenAI and other hosted APIs): `response_format` json_schema, strict;
    - `json_object` (e.g. DeepSeek): any JSON object; `none`: nothing."""
    if not schema_json or mode == "none":
        return {}
    if mode == "json_object":
        return {"response_format": {"type": "json_object"}}
    if mode in ("structured_outputs", "regex"):
        constraint = vllm_constraint(schema_json, max_tokens)
        if mode == "structured_outputs":
            return {"structured_outputs": constraint}
        return {"regex": constraint["regex"]} if "regex" in constraint else {"json_schema": constraint["json"]}
    schema = fit_schema_to_budget(json.loads(schema_json), max_tokens)
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}}


def request_body(row: dict[str, Any], *, model: str, chat: bool, options: OpenAIOptions) -> dict[str, Any]:
    """The JSON body of one request (chat or completion) for one request row."""
    body: dict[str, Any] = {
        "model": model,
        "temperature": float(row["temperature"]),
        "top_p": float(row["top_p"]),
        "max_tokens": int(row["max_tokens"]),
        "seed": int(row["seed"]),
    }
    if int(row.get("top_k") or 0):  # not in the OpenAI API; vLLM serve and SGLang accept it
        body["top_k"] = int(row["top_k"])
    stop = [str(s) for s in (row.get("stop") if row.get("stop") is not None else [])]
    if stop:
        body["stop"] = stop
    system, history = row.get("system") or "", row.get("history")  # no column (an older batch): no history
    if chat:
        body["messages"] = chat_messages(system, row["prompt"], history)
    else:
        body["prompt"] = completion_text(system, row["prompt"], history)
    top_logprobs = int(row.get("top_logprobs") or 0)
    if top_logprobs:  # a scoring judge: the chat API takes a flag and a count, completions a count
        body.update({"logprobs": True, "top_logprobs": top_logprobs} if chat else {"logprobs": top_logprobs})
    body.update(constraint_fields(row.get("json_schema") or "", options.response_format, body["max_tokens"]))
    body.update(options.extra_body)
    return body


def _logprobs(logprobs: dict[str, Any] | None, chat: bool) -> str:
    """A choice's `logprobs` → the `logprobs` result column ("" when the server gave none):
    the chat API's `content` list, or the completions API's parallel lists."""
    if not logprobs:
        return ""
    if chat:
        return from_openai(logprobs.get("content"))
    tokens, tops = logprobs.get("tokens") or [], logprobs.get("top_logprobs") or []
    return from_openai([{"token": t, "top_logprobs": [{"token": a, "logprob": lp} for a, lp in (top or {}).items()]}
                        for t, top in zip(tokens, tops)])


class _Failure(Exception):
    def __init__(self, message: str, retryable: bool, retry_after: float | None = None, connection: bool = False,
                 status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.connection = connection
        self.status = status

    @property
    def outcome(self) -> str:
        """What this failure says about the endpoint (see pushback.py)."""
        if self.status == 429:
            return THROTTLED
        return FAILED if self.retryable else REFUSED


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIRequester:
    """Ray Data callable class: sends a batch of request rows, returns them with results."""

    def __init__(self, *, base_url: str, model: str, chat: bool, options: dict[str, Any], api_key: _Secret):
        import httpx

        self.options = OpenAIOptions.model_validate(options)
        self.model = model
        self.chat = chat
        self.url = base_url.rstrip("/") + ("/chat/completions" if chat else "/completions")
        self.shown_url = public_url(self.url)
        self.api_key = api_key
        headers = {"Content-Type": "application/json"}
        if api_key.value:
            headers["Authorization"] = f"Bearer {api_key.value}"
        n = self.options.max_concurrency
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.options.timeout_s, connect=min(10.0, self.options.timeout_s)),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        )
        self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="openai")
        o = self.options
        attach_build_log()
        self.pushback = Pushback(
            max_concurrency=n, min_concurrency=o.min_concurrency, latency_backoff=o.latency_backoff,
            tokens_per_minute=o.tokens_per_minute, requests_per_minute=o.requests_per_minute,
            breaker_failures=o.breaker_failures, breaker_cooldown_s=o.breaker_cooldown_s,
            breaker_cooldown_max_s=o.breaker_cooldown_max_s, give_up_s=o.give_up_s,
            rate_window_s=o.rate_window_s,
            retry_after_max_s=max(o.backoff_max_s, 1.0), name=f"{model} at {self.shown_url}",
        )
        self._fatal_lock = threading.Lock()
        self._fatal: BuildFailed | None = None  # credentials refused: send nothing more

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = batch.to_dict("records")
        results = list(self.pool.map(self._one, rows))
        batch = batch.copy()
        for i, col in enumerate(RESULT_COLUMNS):
            batch[col] = [r[i] for r in results]
        batch["prompt_tokens"] = batch["prompt_tokens"].astype("int64")
        batch["completion_tokens"] = batch["completion_tokens"].astype("int64")
        return batch

    # -- one request ------------------------------------------------------------------
    def _one(self, row: dict[str, Any]) -> tuple[str, str, int, int, str, str]:
        """One request row's result (RESULT_COLUMNS); every error text it records has the API key scrubbed."""
        text, finish_reason, prompt_tokens, completion_tokens, error, logprobs = self._send(row)
        return text, finish_reason, prompt_tokens, completion_tokens, self.api_key.scrub(error), logprobs

    def _send(self, row: dict[str, Any]) -> tuple[str, str, int, int, str, str]:
        try:
            body = request_body(row, model=self.model, chat=self.chat, options=self.options)
        except Exception as e:  # a bad row (e.g. schema not JSON) must not kill the batch
            return "", "error", 0, 0, f"bad request row: {type(e).__name__}: {e}", ""
        tokens = len(body.get("prompt") or "") + sum(len(m["content"]) for m in body.get("messages", []))
        tokens += body["max_tokens"]  # the estimate a tokens-per-minute limit starts from
        attempt, throttles, throttled_since = 0, 0, None
        while True:
            with self._fatal_lock:
                if self._fatal is not None:
                    raise self._fatal
            try:
                ticket = self.pushback.acquire(tokens)
            except EndpointDown as down:
                return "", "error", 0, 0, transient(f"cannot reach {self.shown_url}: {down}"), ""
            try:
                out = self._post(body)
            except BuildFailed as fatal:
                self.pushback.release(ticket, REFUSED)
                with self._fatal_lock:
                    self._fatal = fatal
                raise
            except _Failure as f:
                self.pushback.release(ticket, f.outcome, retry_after=f.retry_after)
                now = time.monotonic()
                if f.outcome == THROTTLED:  # waits out throttling without using up a retry
                    throttled_since = throttled_since if throttled_since is not None else now
                    if now - throttled_since < self.options.give_up_s:
                        throttles += 1
                        if f.retry_after is None:  # else the pushback pauses every thread
                            time.sleep(self._delay(min(throttles - 1, 8), None))
                        continue
                attempt += 1
                if not f.retryable or attempt > self.options.max_retries:
                    if f.retryable:
                        return "", "error", 0, 0, transient(f"{f} after {attempt} attempt{'s' if attempt > 1 else ''}"), ""
                    return "", "error", 0, 0, str(f), ""
                time.sleep(self._delay(attempt - 1, f.retry_after))
                continue
            self.pushback.release(ticket, OK, tokens_used=out[2] + out[3], completion_tokens=out[3])
            schema_json = row.get("json_schema") or ""
            if schema_json and out[1] == "length":  # cut mid-JSON: close it if that parses
                closed = close_truncated_json(out[0], json.loads(schema_json))
                if closed is not None:
                    out = (closed, *out[1:])
            return out

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.options.backoff_max_s, self.options.backoff_s * (2**attempt))
        delay = base / 2 + random.uniform(0, base / 2)  # "equal jitter"
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.options.backoff_max_s))
        return delay

    def _post(self, body: dict[str, Any]) -> tuple[str, str, int, int, str, str]:
        import httpx

        try:
            resp = self.client.post(self.url, json=body)
        except httpx.TimeoutException as e:
            raise _Failure(f"timeout ({type(e).__name__}, {self.options.timeout_s:g}s) from {self.shown_url}", True) from None
        except httpx.TransportError as e:
            reason = str(e) or type(e).__name__
            raise _Failure(
                f"cannot reach {self.shown_url}: {type(e).__name__}: {reason}", True, connection=True
            ) from None
        if resp.status_code != 200:
            # Scrubbed before the cut, which could split the key and leave part of it unscrubbed.
            snippet = self.api_key.scrub(resp.text)[:300].replace("\n", " ")
            if resp.status_code in (401, 403):
                raise BuildFailed(
                    f"model {self.model!r}: {self.shown_url} refused the credentials (HTTP {resp.status_code}: "
                    f"{snippet}); check the API key in the variable named by openai.api_key_env"
                )
            raise _Failure(
                f"HTTP {resp.status_code} from {self.shown_url}: {snippet}",
                resp.status_code in _RETRY_STATUS or resp.status_code >= 500,
                _retry_after(resp.headers.get("Retry-After")),
                status=resp.status_code,
            )
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
            usage = data.get("usage") or {}
            return (
                text or "",
                str(choice.get("finish_reason") or "stop"),
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                "",
                _logprobs(choice.get("logprobs"), self.chat),
            )
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Failure(f"malformed response from {self.shown_url}: {type(e).__name__}: {e}", False) from None

    def __del__(self) -> None:
        try:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.client.close()
        except Exception:
            pass


class OpenAICompatEngine(Engine):
    """Sends request rows to an OpenAI-compatible server (see module docstring)."""

    def __init__(self, name, spec):
        super().__init__(name, spec)
        if spec.openai is None:
            raise BadInput(f"models.{name}: engine 'openai' needs an 'openai' section with base_url")
        self.options: OpenAIOptions = spec.openai

    def _api_key(self) -> _Secret:
        env = self.options.api_key_env
        if not env:
            return _Secret(None)
        # Surrounding whitespace is an accident (a key file's trailing newline), never part of a key.
        value = (os.environ.get(env) or "").strip()
        if not value:
            raise BadInput(
                f"models.{self.name}.openai.api_key_env: environment variable {env} is not set "
                f"(it must hold the API key for {public_url(self.options.base_url)})"
            )
        if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
            # An HTTP client refusing such a header quotes its value in the error: refuse it here,
            # without echoing it.
            raise BadInput(
                f"models.{self.name}.openai.api_key_env: environment variable {env} does not hold a usable "
                "API key (it contains spaces, control or non-ASCII characters)"
            )
        return _Secret(value)

    def requester_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the `OpenAIRequester` that sends this engine's requests."""
        return {
            "base_url": self.options.base_url,
            "model": self.spec.model,
            "chat": self.spec.prompt_style == "chat",
            "options": self.options.model_dump(mode="json"),
            "api_key": self._api_key(),
        }

    def generate(self, requests):
        from ray.data import ActorPoolStrategy

        n = self.options.max_concurrency
        return requests.map_batches(
            OpenAIRequester,
            fn_constructor_kwargs=self.requester_kwargs(),
            batch_format="pandas",
            # Enough rows per call that the pool stays busy except at a batch's tail.
            batch_size=max(32, 8 * n),
            compute=ActorPoolStrategy(size=1),
            num_cpus=0.25,
        )

    def describe(self):
        o = self.options
        return {
            **super().describe(),
            "base_url": public_url(o.base_url),
            "api_key_env": o.api_key_env,
            "max_concurrency": o.max_concurrency,
            "timeout_s": o.timeout_s,
            "max_retries": o.max_retries,
            "response_format": o.response_format,
        }
