"""A real Label Studio server on 127.0.0.1, for tests/test_label_studio.py (and the README screenshot).

    with label_studio_server(data_dir, log=tmp / "label-studio.log") as server:
        server.url, server.token                # the admin's legacy API token
        annotator = server.annotator("a@x.test")  # signs up through the invite link, as a browser would
        annotator.annotate(task_id, result, lead_time=12.0)

It is PyPI's `label-studio` from its own virtual environment (`make label-studio`: .venv-label-studio,
or the `label-studio` executable SYNTH_LABEL_STUDIO names), with a sqlite database in `data_dir`.
The admin user and its legacy token are made by `label-studio start --username --password
--user-token --enable-legacy-api-token`. Annotators join the admin's organization through its invite
link (`GET /api/invite`, then the sign-up form with its CSRF token) and submit annotations with their
session cookie and CSRF header, the calls the labeling page makes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from vllm_server import free_port

ROOT = Path(__file__).resolve().parent.parent
EXECUTABLE = Path(os.environ.get("SYNTH_LABEL_STUDIO", ROOT / ".venv-label-studio" / "bin" / "label-studio"))
ADMIN = "admin@synth.test"
PASSWORD = "synth-test-password-1"


@dataclass
class Annotator:
    url: str
    email: str
    user_id: int
    http: httpx.Client

    def _headers(self) -> dict[str, str]:
        return {"X-CSRFToken": self.http.cookies.get("csrftoken") or "", "Referer": f"{self.url}/projects/"}

    def annotate(self, task_id: int, result: list[dict[str, Any]], lead_time: float = 10.0) -> dict[str, Any]:
        response = self.http.post(f"/api/tasks/{task_id}/annotations/", json={"result": result, "lead_time": lead_time},
                                  headers=self._headers())
        response.raise_for_status()
        return response.json()

    def personal_access_token(self) -> str:
        """A new personal access token (a JWT refresh token) of this user, as the Account page makes one."""
        response = self.http.post("/api/token/", headers=self._headers())
        response.raise_for_status()
        return response.json()["token"]


@dataclass
class Server:
    url: str
    token: str

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=60)

    def annotator(self, email: str) -> Annotator:
        with self.admin() as admin:
            invite = admin.get("/api/invite").json()["invite_url"]
        http = httpx.Client(base_url=self.url, timeout=60)
        http.get(invite).raise_for_status()
        form = {"csrfmiddlewaretoken": http.cookies.get("csrftoken"), "email": email, "password": PASSWORD,
                "how_find_us": "Other", "allow_newsletters": "false"}
        http.post(invite, data=form, headers={"Referer": f"{self.url}{invite}"})
        me = http.get("/api/current-user/whoami")
        me.raise_for_status()
        assert me.json()["email"] == email, me.text
        return Annotator(self.url, email, me.json()["id"], http)


@contextlib.contextmanager
def label_studio_server(data_dir: Path, *, log: Path, timeout_s: float = 300) -> Iterator[Server]:
    if not EXECUTABLE.exists():
        raise RuntimeError(f"{EXECUTABLE} is missing: `make label-studio` installs Label Studio in its own venv")
    port, token = free_port(), secrets.token_hex(20)
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false", "DJANGO_DB": "sqlite", "HOME": str(data_dir)}
    command = [str(EXECUTABLE), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), "--database", str(data_dir / "label_studio.sqlite3"),
               "--username", ADMIN, "--password", PASSWORD, "--user-token", token, "--enable-legacy-api-token",
               "--log-level", "WARNING"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   cwd=data_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"label-studio exited with {process.returncode}: see {log}")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"label-studio did not answer in {timeout_s:.0f} s: see {log}")
            time.sleep(1)
        yield Server(url, token)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
