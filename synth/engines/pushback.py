"""Pushback: how the OpenAI-compatible engine paces itself against a server that says "slow down"
or has gone away. One `Pushback` per requester, shared by its threads; every request asks it
for a turn (`acquire`) and reports how it went (`release`).

- **Adaptive concurrency (AIMD)**: the number of requests in flight starts at
  `max_concurrency`. A throttled answer (429, 503) halves it, as does a request much slower
  than usual (`latency_backoff` × the moving median seconds per output token); one cut per
  round trip, however many requests of that round come back throttled. After `limit`
  healthy answers in a row it grows by one, up to `max_concurrency`.
- **Retry-After**: a throttled answer's `Retry-After` pauses the whole requester, not just
  the thread that got it.
- **Rate limits**: `requests_per_minute` and `tokens_per_minute` hold in any 60 s window
  (a sliding window of what was sent). A request's tokens are estimated before it is sent
  (prompt characters + `max_tokens`) and corrected with the server's `usage` when it returns.
- **Circuit breaker**: `breaker_failures` failures in a row (no connection, timeout, 5xx)
  open it: nothing is sent for `breaker_cooldown_s`, then one probe goes out. A probe that
  succeeds closes the breaker; one that fails opens it again for twice as long (up to
  `breaker_cooldown_max_s`). Requests wait while it is open, so an outage does not spend
  their retries in a burst. Once it has been open for `give_up_s`, requests that are
  not the probe fail at once (transient: the next run sends them again) so a build against
  a dead endpoint ends instead of waiting forever.

All decisions take the time as an argument, so the logic is tested with a fake clock
(tests/test_pushback.py); `acquire` is the only method that blocks.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("synth.engines.pushback")

OK, THROTTLED, FAILED, REFUSED = "ok", "throttled", "failed", "refused"  # release outcomes
# FAILED: no connection, timeout, 5xx (the endpoint's health); REFUSED: another 4xx or a
# malformed answer (the request's own fault: says nothing about the endpoint).


BUILD_LOG_ENV = "SYNTH_BUILD_LOG"  # set by the build: the requester's state changes go to its build.log


def attach_build_log() -> None:
    """Send this module's log lines to the build's build.log (the requester runs in a Ray
    worker, whose own output a newcomer never sees), not to the console."""
    path = os.environ.get(BUILD_LOG_ENV)
    if not path or not os.path.isdir(os.path.dirname(os.path.abspath(path))):  # no build, or it is gone
        return
    if any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in log.handlers):
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class EndpointDown(Exception):
    """The breaker has been open longer than `give_up_s`: this request is not sent."""


class _Window:
    """At most `limit` units (requests or tokens) sent in any `window_s` seconds: a log of
    what went out and when (a sliding window, so no burst of twice the limit at a boundary)."""

    def __init__(self, limit: float, window_s: float):
        self.limit, self.window_s = limit, window_s
        self.sent: deque[list[float]] = deque()  # [time, units]; units corrected when the answer comes

    def _expire(self, now: float) -> None:
        while self.sent and self.sent[0][0] <= now - self.window_s:
            self.sent.popleft()

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` more fits in the window (0: now). An amount over the limit
        goes alone, into an empty window."""
        self._expire(now)
        used = sum(u for _, u in self.sent)
        if used + amount <= self.limit or not self.sent:
            return 0.0
        for t, units in self.sent:  # the oldest leave first
            used -= units
            if used + amount <= self.limit:
                return t + self.window_s - now
        return self.sent[-1][0] + self.window_s - now

    def take(self, amount: float, now: float) -> list[float]:
        entry = [now, amount]
        self.sent.append(entry)
        return entry


@dataclass
class Ticket:
    """One admitted request: when it started, what it was estimated to cost, whether it is the probe."""

    started: float
    tokens: int
    probe: bool = False
    token_entry: list[float] | None = None  # its line in the tokens-per-minute window


@dataclass
class Pushback:
    max_concurrency: int
    min_concurrency: int = 1
    latency_backoff: float | None = 3.0
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None
    breaker_failures: int = 5
    breaker_cooldown_s: float = 10.0
    breaker_cooldown_max_s: float = 120.0
    give_up_s: float = 600.0
    retry_after_max_s: float = 60.0
    rate_window_s: float = 60.0  # the per-minute limits are counted over this window (scaled)
    name: str = "endpoint"
    clock: Callable[[], float] = time.monotonic

    limit: int = field(init=False)
    in_flight: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        now = self.clock()
        self.limit = self.max_concurrency
        self._cond = threading.Condition()
        self._healthy_in_a_row = 0
        self._last_cut = float("-inf")  # requests started before it do not cut again
        self._paused_until = float("-inf")  # Retry-After
        self._per_token = deque(maxlen=64)  # seconds per output token of recent healthy answers
        scale = self.rate_window_s / 60.0
        self._rpm = _Window(self.requests_per_minute * scale, self.rate_window_s) if self.requests_per_minute else None
        self._tpm = _Window(self.tokens_per_minute * scale, self.rate_window_s) if self.tokens_per_minute else None
        # breaker
        self._failures_in_a_row = 0
        self._open_since: float | None = None  # start of the outage (first opening)
        self._open_until = float("-inf")
        self._cooldown = self.breaker_cooldown_s
        self._probe_out = False
        self.stats = {"throttled": 0, "cuts": 0, "breaker_opened": 0, "probes": 0, "min_limit": self.limit}

    # -- decisions (no blocking; `now` given) ------------------------------------------
    def delay(self, now: float, tokens: int = 0) -> tuple[float | None, bool]:
        """(seconds to wait before trying again, None: until a release; 0: go now), and whether
        the request would go as the breaker's probe. Raises EndpointDown after the give-up time."""
        if self._open_since is not None:
            if now < self._open_until or self._probe_out:
                if now - self._open_since >= self.give_up_s and not self._probe_due(now):
                    raise EndpointDown(
                        f"circuit breaker open for {now - self._open_since:.0f}s after "
                        f"{self.breaker_failures} failed requests in a row"
                    )
                return (None if self._probe_out else self._open_until - now), False
            return 0.0, True  # cooled down and no probe out: this request is the probe
        if now < self._paused_until:
            return self._paused_until - now, False
        if self.in_flight >= self.limit:
            return None, False
        waits = [b.wait_for(n, now) for b, n in ((self._rpm, 1), (self._tpm, tokens)) if b is not None]
        wait = max(waits, default=0.0)
        return wait, False

    def _probe_due(self, now: float) -> bool:
        return now >= self._open_until and not self._probe_out

    def admit(self, now: float, tokens: int, probe: bool) -> Ticket:
        self.in_flight += 1
        if self._rpm is not None:
            self._rpm.take(1, now)
        entry = self._tpm.take(tokens, now) if self._tpm is not None else None
        if probe:
            self._probe_out = True
            self.stats["probes"] += 1
            log.info("%s: probing after a %.0fs cool-down", self.name, self._cooldown)
        return Ticket(started=now, tokens=tokens, probe=probe, token_entry=entry)

    def record(self, ticket: Ticket, outcome: str, now: float, *, retry_after: float | None = None,
               tokens_used: int = 0, completion_tokens: int = 0) -> None:
        """Account for one finished request."""
        self.in_flight -= 1
        if ticket.token_entry is not None and tokens_used:
            ticket.token_entry[1] = tokens_used  # the estimate corrected with the server's usage
        if ticket.probe:
            self._probe_out = False
        if outcome == FAILED:
            self._failure(ticket, now)
            return
        if outcome == REFUSED:
            return
        # the endpoint answered: the breaker closes
        self._failures_in_a_row = 0
        if self._open_since is not None:
            log.info("%s: answering again after %.0fs: circuit breaker closed", self.name, now - self._open_since)
            self._open_since, self._cooldown = None, self.breaker_cooldown_s
        if outcome == THROTTLED:
            self.stats["throttled"] += 1
            if retry_after:
                self._paused_until = max(self._paused_until, now + min(retry_after, self.retry_after_max_s))
            self._cut(ticket, now, "throttled")
            return
        # seconds per output token, short answers counted as 16 tokens (their time is mostly the prompt's)
        per_token = (now - ticket.started) / max(16, completion_tokens)
        if (self.latency_backoff and len(self._per_token) >= 8
                and per_token > self.latency_backoff * statistics.median(self._per_token)):
            self._per_token.append(per_token)
            self._cut(ticket, now, f"latency {per_token:.3f}s a token, median {statistics.median(self._per_token):.3f}s")
            return
        self._per_token.append(per_token)
        self._healthy_in_a_row += 1
        if self._healthy_in_a_row >= self.limit and self.limit < self.max_concurrency:
            self.limit += 1
            self._healthy_in_a_row = 0
            log.info("%s: healthy: concurrency %d", self.name, self.limit)

    def _cut(self, ticket: Ticket, now: float, why: str) -> None:
        self._healthy_in_a_row = 0
        if ticket.started < self._last_cut:
            return  # this round already cut once
        self._last_cut = now
        self.limit = max(self.min_concurrency, self.limit // 2)
        self.stats["cuts"] += 1
        self.stats["min_limit"] = min(self.stats["min_limit"], self.limit)
        log.info("%s: %s: concurrency %d", self.name, why, self.limit)

    def _failure(self, ticket: Ticket, now: float) -> None:
        self._healthy_in_a_row = 0
        self._failures_in_a_row += 1
        if self._open_since is not None:
            if ticket.probe:  # the probe failed: open again, longer
                self._cooldown = min(self._cooldown * 2, self.breaker_cooldown_max_s)
                self._open_until = now + self._cooldown
                log.info("%s: probe failed: circuit breaker open for %.0fs", self.name, self._cooldown)
            return
        if self._failures_in_a_row >= self.breaker_failures:
            self._open_since, self._open_until = now, now + self._cooldown
            self.stats["breaker_opened"] += 1
            log.warning("%s: %d failed requests in a row: circuit breaker open for %.0fs",
                        self.name, self._failures_in_a_row, self._cooldown)

    # -- the blocking API used by the requester's threads ------------------------------
    def acquire(self, tokens: int = 0, sleep_step: float = 1.0) -> Ticket:
        """Wait for a turn; raises EndpointDown when the breaker has given up."""
        with self._cond:
            while True:
                now = self.clock()
                wait, probe = self.delay(now, tokens)
                if wait == 0.0:
                    return self.admit(now, tokens, probe)
                # bounded waits: the give-up time and the rate windows are checked again
                self._cond.wait(timeout=sleep_step if wait is None else min(wait, sleep_step))

    def release(self, ticket: Ticket, outcome: str, **kw) -> None:
        with self._cond:
            self.record(ticket, outcome, self.clock(), **kw)
            self._cond.notify_all()
