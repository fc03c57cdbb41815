"""The review round-trip through a real Label Studio server (issue 32): push, annotate, pull, re-export.

The server is PyPI's `label-studio` from its own venv (`make label-studio`), started on 127.0.0.1 with
sqlite by tests/label_studio_server.py and stopped after this module. Two annotators join through the
invite link and label the demo dry-run build's controversial tier with the labeling page's own API
calls (session cookie and CSRF header), disagreeing on one row. Texts are the dry run's placeholders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from label_studio_server import label_studio_server
from synth.cli import app
from synth.human_labels import HUMAN
from synth.review import build_subcategories, labeling_config
from test_review import f1_by_hand, kappa_by_hand
from vllm_server import free_port

runner = CliRunner()
SAFE, UNSAFE, DISPUTED = "安全", "不安全", "有争议"
PROJECT = "synth demo tier"
TOKEN_ENV = "SYNTH_TEST_LABEL_STUDIO_TOKEN"


def _choice(name: str, value: str) -> dict:
    return {"from_name": name, "to_name": "dialogue", "type": "choices", "value": {"choices": [value]}}


def _invoke(*args: str, token: str | None = None):
    result = runner.invoke(app, list(args), env={TOKEN_ENV: token} if token is not None else {TOKEN_ENV: None})
    assert "Traceback" not in result.output
    return result


def _push(build: Path, url: str, token: str, project: str = PROJECT):
    return _invoke("review", "push", str(build), "--to", url, "--project", project, "--token-env", TOKEN_ENV,
                   token=token)


def _pull(build: Path, url: str, token: str | None, project: str = PROJECT):
    return _invoke("review", "pull", str(build), "--from", url, "--project", project, "--token-env", TOKEN_ENV,
                   token=token)


def _server_tasks(admin: httpx.Client, project_id: int) -> list[dict]:
    answer = admin.get("/api/tasks", params={"project": project_id, "page_size": 1000}).json()
    return answer["tasks"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label-studio")
    with label_studio_server(tmp / "data", log=tmp / "label-studio.log") as running:
        yield running


@pytest.fixture(scope="module")
def round_trip(server, demo_build, tmp_path_factory) -> dict:
    """The demo dry-run build's tier pushed (twice), six rows labelled by two annotators and a seventh by
    one, pushed again, pulled (twice) and re-exported with `synth export BUILD`."""
    source, _ = demo_build
    build = tmp_path_factory.mktemp("ls-review") / "build"
    shutil.copytree(source, build, ignore=shutil.ignore_patterns("cache", ".synth.lock"))
    tier_rows = json.loads((build / "manifest.json").read_text(encoding="utf-8"))["export"]["controversial"]["rows"]
    first = _push(build, server.url, server.token)
    assert first.exit_code == 0, first.output
    second = _push(build, server.url, server.token)
    assert second.exit_code == 0, second.output
    project_id = json.loads(first.stdout)["project_id"]
    with server.admin() as admin:
        tasks = sorted(_server_tasks(admin, project_id), key=lambda t: t["data"]["row_id"])
    a, b = server.annotator("ann-a@synth.test"), server.annotator("ann-b@synth.test")
    rows = [t["data"]["row_id"] for t in tasks[:7]]
    people = {row_id: [SAFE if i % 2 else UNSAFE] * 2 for i, row_id in enumerate(rows[:6])}
    people[rows[0]] = [SAFE, UNSAFE]  # a disagreement: stays 有争议
    people[rows[6]] = [UNSAFE]  # one annotator settles it
    for task in tasks[:7]:
        for who, label in zip((a, b), people[task["data"]["row_id"]]):
            extra = [_choice("question_harmful", "是")] if who is a else []
            who.annotate(task["id"], [_choice("label", label), *extra], lead_time=7.5)
    third = _push(build, server.url, server.token)  # after annotating: nothing added, nothing touched
    assert third.exit_code == 0, third.output
    with server.admin() as admin:
        after = _server_tasks(admin, project_id)
    pulled = _pull(build, server.url, server.token)
    assert pulled.exit_code == 0, pulled.output
    exported = _invoke("export", str(build))
    assert exported.exit_code == 0, exported.output
    return {"build": build, "tasks": tasks, "after": after, "people": people, "tier_rows": tier_rows,
            "annotators": (a, b), "project_id": project_id, "push": [json.loads(r.stdout) for r in (first, second, third)],
            "pull": json.loads(pulled.stdout)}


def test_push_creates_the_project_with_the_tier_and_the_judges_as_predictions(server, round_trip):
    first, second, third = round_trip["push"]
    tasks, build = round_trip["tasks"], round_trip["build"]
    assert first["created"] and not second["created"]
    assert first["added"] == first["selected"] == round_trip["tier_rows"] == len(tasks) >= 7
    assert (second["added"], third["added"]) == (0, 0) and second["tasks"] == third["tasks"] == len(tasks)
    assert len(round_trip["after"]) == len(tasks)
    assert sum(t["total_annotations"] for t in round_trip["after"]) == 13  # annotations untouched by the push
    with server.admin() as admin:
        project = admin.get(f"/api/projects/{round_trip['project_id']}").json()
        task = admin.get(f"/api/tasks/{tasks[0]['id']}").json()
    assert project["title"] == PROJECT
    assert project["label_config"] == labeling_config(build_subcategories(build)).strip()
    assert task["data"]["row_id"] == tasks[0]["data"]["row_id"] and task["data"]["project"] == PROJECT
    predictions = {p["model_version"]: p for p in task["predictions"]}
    judgements = {j["judge"]: j for j in task["data"]["judgements"]}
    assert set(predictions) == {j for j, v in judgements.items() if v["verdict"]} and predictions
    for judge, prediction in predictions.items():
        label = next(r for r in prediction["result"] if r["from_name"] == "label")
        assert label["value"]["choices"] == [judgements[judge]["verdict"]]
        assert prediction["score"] == pytest.approx(judgements[judge]["unsafe_score"])


def test_pull_records_every_annotation_and_the_re_export_applies_them(server, round_trip):
    build, people = round_trip["build"], round_trip["people"]
    assert round_trip["pull"]["added"] == 13 and round_trip["pull"]["source"] == f"{server.url} project {PROJECT!r}"
    annotations = pq.read_table(build / "reviews/annotations.parquet").to_pandas()
    assert len(annotations) == 13
    assert set(annotations["annotator"]) == {"ann-a@synth.test", "ann-b@synth.test"}
    assert (annotations["lead_time"] == 7.5).all() and annotations["updated_at"].notna().all()
    by_a = annotations[annotations["annotator"] == "ann-a@synth.test"]
    assert by_a["question_harmful"].eq(True).all() and len(by_a) == 7
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    export = manifest["export"]
    settled = {row_id: labels[0] for row_id, labels in people.items() if len(set(labels)) == 1}
    assert len(settled) == 6
    assert export["controversial"]["rows"] == round_trip["tier_rows"] - 6  # settled rows left the tier
    corpus = {r["id"]: r for f in sorted((build / "corpus/data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    for row_id, label in settled.items():
        assert corpus[row_id]["label"] == label and corpus[row_id]["label_source"] == HUMAN
    cut = pq.read_metadata(build / "rejects/balance.parquet").num_rows
    assert export["corpus_rows"] + cut + export["controversial"]["rows"] == manifest["stages"][-1]["rows_out"]
    assert export["reviewed"]["rows"] == 6 and export["reviewed"]["label_source"][HUMAN] == 6
    assert "labels from people: 6 of the" in (build / "corpus/README.md").read_text(encoding="utf-8")


def test_pulling_again_changes_nothing(server, round_trip):
    annotations = round_trip["build"] / "reviews/annotations.parquet"
    before = annotations.read_bytes()
    again = _pull(round_trip["build"], server.url, server.token)
    assert again.exit_code == 0, again.output
    result = json.loads(again.stdout)
    assert (result["added"], result["updated"], result["unchanged"]) == (0, 0, 13)
    assert annotations.read_bytes() == before


def test_agreement_figures_match_a_hand_computation(round_trip):
    build, people, tasks = round_trip["build"], round_trip["people"], round_trip["tasks"]
    figures = json.loads((build / "report/report.json").read_text(encoding="utf-8"))["reviews"]
    judges = {t["data"]["row_id"]: {j["judge"]: j["verdict"] for j in t["data"]["judgements"]} for t in tasks}
    settled = sorted(r for r, labels in people.items() if len(set(labels)) == 1)
    truth = [people[r][0] for r in settled]
    for name, f in figures["judges_vs_people"]["judges"].items():
        verdicts = [judges[r][name] for r in settled]
        assert f["accuracy"] == pytest.approx(sum(t == v for t, v in zip(truth, verdicts)) / len(truth), abs=1e-4)
        assert f["f1"][SAFE] == pytest.approx(f1_by_hand(truth, verdicts, SAFE), abs=1e-4)
        assert f["f1"][UNSAFE] == pytest.approx(f1_by_hand(truth, verdicts, UNSAFE), abs=1e-4)
        assert f["kappa"] == pytest.approx(kappa_by_hand(truth, verdicts), abs=1e-4)
    # people vs people: the six rows two annotators labelled, 5 of 6 pairs agreeing
    pp = figures["people_vs_people"]
    assert (pp["rows"], pp["annotations"]) == (6, 12) and pp["pair_agreement"] == pytest.approx(5 / 6, abs=1e-4)
    values = [label for labels in people.values() if len(labels) == 2 for label in labels]
    n_safe, n_unsafe = values.count(SAFE), values.count(UNSAFE)
    # Krippendorff's alpha, nominal, no missing values: 1 - (n - 1) * disagreeing pairs / sum over c != k of n_c n_k
    assert pp["krippendorff_alpha"] == pytest.approx(1 - (12 - 1) * 2 / (2 * n_safe * n_unsafe), abs=1e-4)


def test_the_reviews_are_eval_judges_gold(round_trip, repo_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    reviews = round_trip["build"] / "reviews"
    result = runner.invoke(app, ["eval-judges", str(reviews), "--config", str(repo_root / "pipelines/demo.yaml"),
                                 "--json", "--dry-run"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert measured["n"] == 6 and set(measured["judges"]) == {"judge-answer", "judge-behaviour"}


def test_a_personal_access_token_works_and_is_never_printed(server, round_trip):
    annotator = round_trip["annotators"][0]
    token = annotator.personal_access_token()  # a JWT refresh token: exchanged for an access token
    result = _pull(round_trip["build"], server.url, token)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unchanged"] == 13 and token not in result.output


def _project_with(server, title: str, build: Path, data: dict, annotator) -> None:
    """A project made by hand in the server, one task of `data` (the fields the labeling config shows), annotated."""
    with server.admin() as admin:
        project = admin.post("/api/projects", json={"title": title,
                                                    "label_config": labeling_config(build_subcategories(build))})
        project.raise_for_status()
        admin.post(f"/api/projects/{project.json()['id']}/import", json=[{"data": data}]).raise_for_status()
        task = _server_tasks(admin, project.json()["id"])[0]
    annotator.annotate(task["id"], [_choice("label", SAFE)])


@pytest.mark.parametrize("case", ["unreachable", "wrong token", "no token", "no such project", "another project",
                                  "malformed"])
def test_bad_input_exits_2_names_the_server_never_prints_the_token_and_loses_nothing(server, round_trip, case):
    build = round_trip["build"]
    annotations = build / "reviews/annotations.parquet"
    before = annotations.read_bytes()
    url, token, project = server.url, server.token, PROJECT
    expected = [server.url]
    if case == "unreachable":
        url = f"http://127.0.0.1:{free_port()}"
        expected = [url, "unreachable"]
    elif case == "wrong token":
        token = "f" * 40
        expected = [server.url, "refused", "401", TOKEN_ENV]
    elif case == "no token":
        token, expected = None, [TOKEN_ENV, "not set"]
    elif case == "no such project":
        project, expected = "nobody made this", [server.url, "nobody made this"]
    elif case == "another project":
        project = "another build"
        _project_with(server, project, build, {**round_trip["tasks"][0]["data"], "row_id": "ffffffffffffffff",
                                               "project": project}, round_trip["annotators"][0])
        expected = [server.url, repr(project), "row ffffffffffffffff", "another project or build"]
    else:
        project = "stray tasks"
        data = {k: v for k, v in round_trip["tasks"][0]["data"].items() if k != "row_id"}
        _project_with(server, project, build, {**data, "project": project}, round_trip["annotators"][1])
        expected = [server.url, repr(project), "task 0", "no data.row_id"]
    result = _pull(build, url, token, project)
    assert result.exit_code == 2, result.output
    for part in expected:
        assert part in result.output, (part, result.output)
    assert server.token not in result.output and (token is None or token not in result.output)
    assert annotations.read_bytes() == before
    if case in ("unreachable", "wrong token", "no token"):
        pushed = _push(build, url, token, project)
        assert pushed.exit_code == 2 and all(part in pushed.output for part in expected), pushed.output
        assert server.token not in pushed.output
