"""One build per output directory: a lock file with the owner's pid and host.

A second build on the same directory exits 2 naming the owner. A lock left by a
process that no longer exists (a SIGKILLed or pre-empted build) is stale: the
next build takes it over and says so.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
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
    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME

    def __enter__(self) -> "BuildLock":
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

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
