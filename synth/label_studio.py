"""A client of the few Label Studio REST endpoints `synth review push/pull` use with a server URL.

    synth review push BUILD --to http://HOST:8080 --project NAME [--token-env LABEL_STUDIO_API_KEY]
    synth review pull BUILD --from http://HOST:8080 --project NAME [--token-env LABEL_STUDIO_API_KEY]

Why not label-studio-sdk: it installs opencv, nltk and their trees for what is here seven calls
over httpx, which synth already depends on. The server itself (PyPI `label-studio`) pins pyarrow
and openai versions that clash with vLLM's, so it runs from its own virtual environment as a
separate service (`make label-studio`, docs/review.md).

    GET   /api/projects?title=NAME             the project, by its exact title (paged)
    POST  /api/projects                        create it with the labeling config
    PATCH /api/projects/{id}                   the labeling config, when the build's differs
    GET   /api/tasks?project={id}              the row ids already in it (paged)
    POST  /api/projects/{id}/import            new tasks with the judges' predictions, in chunks
    GET   /api/projects/{id}/export?exportType=JSON   the annotated tasks, as the JSON export file
    GET   /api/users                           annotators' emails (an annotation names a user id)

The token is read from the environment variable the user names, never from an argument, and it is
never written, printed or put in an error message. A legacy token goes as `Authorization: Token`;
a personal access token (a JWT refresh token, Label Studio >= 1.20's default) is exchanged at
`/api/token/refresh` for a short-lived access token sent as `Bearer`, again when it expires.
Every failure is a BadInput (exit 2) naming the URL and the project: unreachable, a refused token
(401/403), a project that does not exist (pull), an error the server answered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from synth.errors import BadInput

DEFAULT_TOKEN_ENV = "LABEL_STUDIO_API_KEY"
PAGE_SIZE = 500
IMPORT_CHUNK = 500
TITLE_MAX = 50  # Label Studio's limit on a project's title


def is_url(target: str) -> bool:
    """Whether a `--to`/`--from` names a Label Studio server rather than a JSON file."""
    return str(target).startswith(("http://", "https://"))


def token_from(env: str) -> str:
    token = os.environ.get(env, "").strip()
    if not token:
        raise BadInput(f"--token-env {env}: the environment variable is not set; put the Label Studio API token in "
                       "it (Label Studio: Account & Settings -> Personal Access Token, or the legacy Access Token)")
    return token


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class LabelStudio:
    """One server, one token (see the module docstring)."""

    def __init__(self, url: str, token_env: str = DEFAULT_TOKEN_ENV, *, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.token_env = token_env
        self._token = token_from(token_env)
        self._access: str | None = None
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------

    def _send(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as e:
            raise BadInput(f"{self.url}: Label Studio is unreachable ({type(e).__name__}: {e})") from None

    def _refresh(self) -> None:
        response = self._send("POST", "/api/token/refresh", {}, json={"refresh": self._token})
        if response.status_code in (401, 403):
            self._refused(response)
        access = response.json().get("access") if response.status_code == 200 else None
        if not access:
            raise BadInput(f"{self.url}/api/token/refresh: no access token for the personal access token in "
                           f"${self.token_env} ({response.status_code})")
        self._access = access

    def _auth(self) -> dict[str, str]:
        if not _is_jwt(self._token):
            return {"Authorization": f"Token {self._token}"}
        if self._access is None:
            self._refresh()
        return {"Authorization": f"Bearer {self._access}"}

    def _refused(self, response: httpx.Response) -> None:
        raise BadInput(f"{self.url}: the token in ${self.token_env} was refused ({response.status_code} "
                       f"{response.reason_phrase}): check it is this server's and still valid")

    def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> Any:
        """The JSON of a call that must succeed; BadInput naming the URL and `what` otherwise."""
        response = self._send(method, path, self._auth(), **kwargs)
        if response.status_code == 401 and self._access is not None:  # the access token expired
            self._refresh()
            response = self._send(method, path, self._auth(), **kwargs)
        if response.status_code in (401, 403):
            self._refused(response)
        if response.status_code >= 400:
            raise BadInput(f"{self.url}{path}: {what} failed ({response.status_code} {response.reason_phrase}): "
                           f"{response.text[:500]}")
        try:
            return response.json() if response.content else None
        except json.JSONDecodeError:
            raise BadInput(f"{self.url}{path}: {what}: the answer is not JSON ({response.text[:200]!r}): is this a "
                           "Label Studio server?") from None

    # -- projects -----------------------------------------------------------------------------

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project titled exactly `title` (the API's filter also matches parts of titles)."""
        page = 1
        while True:
            answer = self.request("GET", "/api/projects", what=f"listing projects titled {title!r}",
                                  params={"title": title, "page": page, "page_size": PAGE_SIZE})
            for project in answer.get("results", []):
                if project.get("title") == title:
                    return project
            if not answer.get("next"):
                return None
            page += 1

    def project(self, title: str) -> dict[str, Any]:
        found = self.find_project(title)
        if found is None:
            raise BadInput(f"{self.url}: no project titled {title!r} (push to it first)")
        return found

    def ensure_project(self, title: str, label_config: str, description: str = "") -> tuple[dict[str, Any], bool]:
        """The project titled `title` with `label_config`, created if missing; (project, created)."""
        if not title or len(title) > TITLE_MAX:
            raise BadInput(f"--project {title!r}: a Label Studio project title has 1 to {TITLE_MAX} characters")
        found = self.find_project(title)
        if found is None:
            created = self.request("POST", "/api/projects", what=f"creating project {title!r}",
                                   json={"title": title, "label_config": label_config, "description": description})
            return created, True
        if (found.get("label_config") or "").strip() != label_config.strip():  # the server strips it
            found = self.request("PATCH", f"/api/projects/{found['id']}", what=f"updating project {title!r}'s "
                                 "labeling config", json={"label_config": label_config})
        return found, False

    # -- tasks --------------------------------------------------------------------------------

    def tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of the project (without annotations), page by page."""
        page, seen = 1, 0
        while True:
            answer = self.request("GET", "/api/tasks", what=f"listing project {project_id}'s tasks",
                                  params={"project": project_id, "page": page, "page_size": PAGE_SIZE,
                                          "fields": "task_only"})
            batch = answer.get("tasks", []) if isinstance(answer, dict) else answer
            yield from batch
            seen += len(batch)
            if not batch or seen >= int(answer.get("total", seen) if isinstance(answer, dict) else seen):
                return
            page += 1

    def row_ids(self, project_id: int) -> set[str]:
        return {t["data"]["row_id"] for t in self.tasks(project_id) if isinstance(t.get("data"), dict)
                and t["data"].get("row_id")}

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> int:
        """Add `tasks` (their predictions with them), `IMPORT_CHUNK` a call; how many were added."""
        added = 0
        for start in range(0, len(tasks), IMPORT_CHUNK):
            chunk = list(tasks[start:start + IMPORT_CHUNK])
            answer = self.request("POST", f"/api/projects/{project_id}/import", what=f"importing tasks into project "
                                  f"{project_id}", json=chunk)
            added += int(answer.get("task_count", len(chunk)))
        return added

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """The project's annotated tasks in the JSON export format, each annotation's `completed_by` an
        object with the annotator's id and email."""
        tasks = self.request("GET", f"/api/projects/{project_id}/export", what=f"exporting project {project_id}",
                             params={"exportType": "JSON", "download_all_tasks": "false"})
        if not isinstance(tasks, list):
            raise BadInput(f"{self.url}/api/projects/{project_id}/export: expected a list of tasks, got "
                           f"{type(tasks).__name__}")
        emails = {u.get("id"): u.get("email") for u in self.request("GET", "/api/users", what="listing users") or []
                  if isinstance(u, dict)}
        for task in tasks:
            for annotation in task.get("annotations") or [] if isinstance(task, dict) else []:
                who = annotation.get("completed_by") if isinstance(annotation, dict) else None
                if isinstance(who, int) and not isinstance(who, bool) and emails.get(who):
                    annotation["completed_by"] = {"id": who, "email": emails[who]}
        return tasks
