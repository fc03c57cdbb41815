"""One build per output directory: a lock file with the owner's pid and host.

A second build on the same directory exits 2 naming the owner. A lock left by a
process that no longer exists (a SIGKILLed or pre-empted build) is stale: the
next build takes it over and says so.

On an object store (no exclusive create, no process to ask) the lock is a *lease*:
an object `<out>/.synth.lock` with the owner (pid, host, a random token) and an expiry,
rewritten every third of `SYNTH_LEASE_SECONDS` (default 60) by a thread while the build
runs. A build finding an unexpired lease of another owner exits 2; an expired lease,
or one of a dead process on this host, is taken over. Taking it writes the lease, waits,
and reads it back: of two builds racing for it, the one whose token is not there exits 2.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from synth.errors import BadInput

log = logging.getLogger("synth")
LOCK_NAME = ".synth.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BuildLock:
    """The build lock of `out`: a lock file for a local directory, a lease object (`LeaseLock`)
    for a location on an object store (see synth.storage)."""

    def __new__(cls, out: Path | str, *, reading: bool = False):
        from synth import storage

        if cls is BuildLock and storage.is_remote(out):
            return LeaseLock(out)
        return super().__new__(cls)

    def __init__(self, out: Path, *, reading: bool = False):
        # A reader of a local build (export, report) takes no lock: it writes nothing into the
        # build (the build may be on a read-only disk). On an object store a reader holds the
        # lease while it copies the build, so no build rewrites it meanwhile.
        self.path = Path(out) / LOCK_NAME
        self.reading = reading

    def __enter__(self) -> "BuildLock":
        if self.reading:
            return self
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                unreadable = not owner and time.time() - self.path.stat().st_mtime > 10
                if unreadable or owner.get("host") == me["host"] and not _alive(int(owner.get("pid", -1))):
                    log.warning("taking over a stale lock from dead process %s (%s)", owner.get("pid"), self.path)
                    self.path.unlink(missing_ok=True)
                    continue
                raise BadInput(
                    f"{self.path.parent}: another build is writing here (pid {owner.get('pid')} on "
                    f"{owner.get('host')}, since {owner.get('started')}); lock file {self.path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise BadInput(f"{self.path}: could not take the build lock")

    def check(self) -> None:
        """A lock file on a local disk is held until released."""

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc) -> None:
        if not self.reading:
            self.path.unlink(missing_ok=True)


LEASE_SECONDS_ENV = "SYNTH_LEASE_SECONDS"


class LeaseLock:
    """A lease object with owner and expiry on an object store (see the module docstring)."""

    def __init__(self, out: str):
        from synth import storage

        self.out = out
        self.location = storage.join(out, LOCK_NAME)
        self.seconds = float(os.environ.get(LEASE_SECONDS_ENV, 60))
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex,
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.expires = 0.0  # of the lease this build last wrote
        self.lost: str | None = None  # why the lease is no longer this build's

    def _read(self) -> dict | None:
        from synth import storage

        try:
            return json.loads(storage.read_bytes(self.location))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _write(self) -> None:
        from synth import storage

        expires = time.time() + self.seconds
        lease = {**self.me, "expires": expires,
                 "expires_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))}
        storage.write_bytes(self.location, json.dumps(lease).encode())
        self.expires = expires

    def _busy(self, owner: dict) -> BadInput:
        return BadInput(f"{self.out}: another build is writing here (pid {owner.get('pid')} on {owner.get('host')}, "
                        f"since {owner.get('started')}, lease until {owner.get('expires_utc')}); lease {self.location}")

    def __enter__(self) -> "LeaseLock":
        from synth import storage

        storage.check_reachable(self.out)
        owner = self._read()
        if owner is not None and owner.get("token") != self.me["token"]:
            expired = float(owner.get("expires", 0)) < time.time()
            dead = owner.get("host") == self.me["host"] and not _alive(int(owner.get("pid", -1)))
            if not (expired or dead):
                raise self._busy(owner)
            log.warning("taking over a stale lease from process %s on %s (%s)", owner.get("pid"), owner.get("host"),
                        "expired" if expired else "dead process")
        self._write()
        time.sleep(min(1.0, self.seconds / 10))  # a racing build's write lands before this read
        owner = self._read() or {}
        if owner.get("token") != self.me["token"]:
            raise self._busy(owner)
        self._thread = threading.Thread(target=self._refresh, name="synth-lease", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                owner = self._read() or {}
                if owner.get("token") != self.me["token"]:
                    self.lost = f"taken over by pid {owner.get('pid')} on {owner.get('host')}"
                    log.error("the build lease %s was %s", self.location, self.lost)
                    return
                self._write()
            except Exception as e:  # noqa: BLE001 - a store hiccup: try again at the next refresh
                log.warning("refreshing the build lease %s failed: %s", self.location, type(e).__name__)
                if time.time() > self.expires:
                    self.lost = f"not refreshed before it expired ({type(e).__name__})"
                    log.error("the build lease %s was %s", self.location, self.lost)
                    return

    def check(self) -> None:
        """BuildFailed (exit 1) once the lease is no longer this build's (see the module docstring)."""
        if self.lost:
            from synth.errors import BuildFailed

            raise BuildFailed(f"{self.out}: the build lease {self.location} was {self.lost}; stopped before the "
                              "next stage (finished stages are kept; the build that holds the lease goes on)")

    def __exit__(self, *exc) -> None:
        from synth import storage

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        owner = self._read() or {}
        if owner.get("token") == self.me["token"]:
            storage.delete(self.location)
