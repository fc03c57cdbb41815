"""Issue 30, items 2 and 3: coverage by request beside coverage by content, and the scorecard
per template and subcategory, on one small dry-run build (stand-in engine, question judge on)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from synth.build import run_build
from synth.export import read_table
from synth.report.collect import coverage_by_content
from synth.report.render import COVERAGE_BY_CONTENT, sections
from synth.report.scorecard import scorecard
from synth.stages.question_judge import judged_on_topic

SCENARIOS = ["hate_abuse", "privacy_property"]  # 3 + 4 subcategories


@pytest.fixture(scope="module")
def judged_build(ray_session, repo_root: Path, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("scorecard")
    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"), scenarios=SCENARIOS)
    raw["generation"].update(harmful_calls_per_subcategory=2, benign_calls_per_subcategory=1)
    assert raw["roles"]["question_judges"]
    # routing that rewrites kind and subcategory, so keying by the request is what is tested
    raw.setdefault("judge_questions", {}).update(on_kind_mismatch="relabel", on_off_topic="reassign")
    config = tmp / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    out = tmp / "build"
    return out, run_build(config, out, dry_run=True)


def _report(out: Path) -> dict:
    return json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))


def _both(out: Path, stage: str) -> pd.DataFrame:
    return pd.concat([read_table(out / "stages" / stage / part) for part in ("rows", "rejects")], ignore_index=True)


def _requested(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(kind=frame["requested_kind"].fillna(frame["kind"]),
                        subcategory=frame["requested_subcategory"].fillna(frame["subcategory"]))


def test_the_scorecard_reconciles_with_the_funnel(judged_build):
    out, manifest = judged_build
    card = scorecard(out, manifest)
    stages = {s["name"]: s for s in manifest["stages"]}
    elements = read_table(out / "stages" / "elements" / "rows")
    # one row per requested scenario × subcategory × kind, and the report carries the same rows
    keys = [(r["scenario"], r["subcategory"], r["kind"]) for r in card]
    assert sorted(keys) == sorted(set(map(tuple, elements[["scenario", "subcategory", "kind"]].values)))
    assert _report(out)["scorecard"] == json.loads(json.dumps(card, ensure_ascii=False))
    # the build did route questions, so keying by the request is being tested
    assert sum(stages["judge_questions"]["routed"].values()) > 0

    written = _both(out, "queries")
    per_call = yaml.safe_load((out / "inputs" / "config.yaml").read_text())["generation"]["questions_per_call"]
    for kind in ("harmful", "benign"):
        mine = [r for r in card if r["kind"] == kind]
        assert sum(r["questions_written"] for r in mine) == int((written["kind"] == kind).sum()) > 0
        assert sum(r["questions_asked"] for r in mine) == int((elements["kind"] == kind).sum()) * per_call

    # losses: every reject of every stage before the answers, by stage and reason, and nothing after
    losses: dict[str, dict[str, int]] = {}
    for r in card:
        assert r["lost"] == sum(n for by in r["losses"].values() for n in by.values())
        for stage, by in r["losses"].items():
            for reason, n in by.items():
                losses.setdefault(stage, {}).setdefault(reason, 0)
                losses[stage][reason] += n
    question_stages = manifest["stages"][:[s["name"] for s in manifest["stages"]].index("respond")]
    assert losses == {s["name"]: s["rejected"] for s in question_stages if s["rejected"]}
    assert sum(n for by in losses.values() for n in by.values()) > 0  # not vacuous
    assert "annotate" not in losses  # a pair stage's rejects are no question's

    # the corpus and the pairs, each row under the request it came from (also when routed)
    corpus = _requested(read_table(out / "corpus" / "data"))
    assert sum(r["corpus_rows"] for r in card) == len(corpus) == manifest["export"]["corpus_rows"]
    pairs = _requested(read_table(out / "stages" / "annotate" / "rows"))
    assert sum(r["pairs"] for r in card) == len(pairs) == stages["annotate"]["rows_out"]
    for r in card:
        in_corpus = corpus[(corpus["subcategory"] == r["subcategory"]) & (corpus["kind"] == r["kind"])]
        assert r["corpus_rows"] == len(in_corpus)
        mine = pairs[(pairs["subcategory"] == r["subcategory"]) & (pairs["kind"] == r["kind"])]
        labelled = mine[mine["label"].isin(["安全", "不安全"])]
        assert r["unsafe_yield"] == (round((labelled["label"] == "不安全").mean(), 4) if len(labelled) else None)
        assert r["refusals"] is None  # the demo's judges are not asked the refusal field
        for share in ("judged_on_topic", "judged_harmful", "unsafe_yield", "judge_disagreement"):
            assert r[share] is None or 0 <= r[share] <= 1

    # judged on topic: against the request, so a relabelled or reassigned question is off topic
    judged = _requested(_both(out, "judge_questions"))
    on_request = sum(judged_on_topic(row) for row in judged.astype(object).where(judged.notna(), None)
                     .to_dict("records"))
    assert sum(round(r["judged_on_topic"] * r["judged"]) for r in card if r["judged"]) == on_request
    routed = judged[judged["question_route"].fillna("") != ""]
    assert not any(judged_on_topic(row) for row in routed.astype(object).where(routed.notna(), None)
                   .to_dict("records"))

    # weakest first: on topic, then unsafe yield, not measured first
    def measured(v):
        return (v is not None, v or 0.0)

    order = [(*measured(r["judged_on_topic"]), *measured(r["unsafe_yield"])) for r in card]
    assert order == sorted(order)


def test_coverage_by_request_and_by_content_in_report_and_card(judged_build):
    out, manifest = judged_build
    n = _report(out)
    content = n["coverage_by_content"]
    corpus = read_table(out / "corpus" / "data")
    asked_for = read_table(out / "stages" / "elements" / "rows")["subcategory"].unique()
    assert content["subcategories"] == len(asked_for) == len(content["by_subcategory"]) == 7
    by = {c["subcategory"]: c for c in content["by_subcategory"]}
    # metadata: by what was asked for
    asked = _requested(corpus)
    for kind in ("harmful", "benign"):
        assert sum(c[f"metadata_{kind}"] for c in by.values()) == int((asked["kind"] == kind).sum())
    assert content["metadata_harmful"] == asked.loc[asked["kind"] == "harmful", "subcategory"].nunique()
    # content: rows the question judge found as their kind says and about their subcategory
    plain = corpus.astype(object).where(corpus.notna(), None)
    confirmed = corpus[[judged_on_topic(r) for r in plain.to_dict("records")]]
    assert 0 < len(confirmed) <= len(corpus)
    # routing moved rows: what was asked for and what the rows hold differ somewhere
    assert any(c[f"metadata_{kind}"] != c[f"content_{kind}"] for c in by.values() for kind in ("harmful", "benign"))
    elsewhere = ~confirmed["subcategory"].isin(asked_for)  # reassigned to a scenario the build left out
    assert content["content_elsewhere"] == int(elsewhere.sum())
    confirmed = confirmed[~elsewhere]
    for kind in ("harmful", "benign"):
        mine = confirmed[confirmed["kind"] == kind]
        assert sum(c[f"content_{kind}"] for c in by.values()) == len(mine)
        for sub, g in mine.groupby("subcategory"):
            assert by[sub][f"content_{kind}"] == len(g)
    assert content["content_harmful"] == confirmed.loc[confirmed["kind"] == "harmful", "subcategory"].nunique()

    headline = (f"metadata: {content['metadata_harmful']}/{content['subcategories']} subcategories with a "
                f"harmful-kind row; content: {content['content_harmful']}/{content['subcategories']} with a "
                "harmful-kind row judged harmful and on topic")
    assert manifest["export"]["coverage"] == {k: v for k, v in content.items() if k != "by_subcategory"}
    card = (out / "corpus" / "README.md").read_text(encoding="utf-8")
    assert card.count(headline) == 1
    report = (out / "report" / "README.md").read_text(encoding="utf-8")
    assert f"## {COVERAGE_BY_CONTENT}" in report and headline in report
    assert "## Scorecard per template and subcategory" in report

    # judged with the request as evidence (judge_questions.request_prior): the report says at which prior
    assert content["request_prior"] is None and "request as evidence" not in report


def test_the_content_coverage_says_when_the_request_was_evidence(judged_build, tmp_path: Path):
    import shutil

    out, _ = judged_build
    copy = tmp_path / "build"
    shutil.copytree(out, copy)
    recorded = yaml.safe_load((copy / "inputs" / "config.yaml").read_text(encoding="utf-8"))
    recorded.setdefault("judge_questions", {})["request_prior"] = 0.2
    (copy / "inputs" / "config.yaml").write_text(yaml.safe_dump(recorded, allow_unicode=True), encoding="utf-8")
    content = coverage_by_content(copy, read_table(copy / "corpus" / "data"))
    assert content["request_prior"] == 0.2
    notes = {title: note for title, note, *_ in sections({**_report(out), "coverage_by_content": content})}
    assert "request as evidence at prior 0.2 (judge_questions.request_prior" in notes[COVERAGE_BY_CONTENT]


def test_without_a_question_judge_the_coverage_is_as_before(judged_build):
    """No verdict on any row (no question judge ran): no content coverage, no new section."""
    out, _ = judged_build
    corpus = read_table(out / "corpus" / "data")
    unjudged = corpus.assign(question_harmful=None, judged_subcategory=None)
    assert coverage_by_content(out, unjudged) is None
    assert coverage_by_content(out, corpus.drop(columns=["question_harmful"])) is None
    n = {**_report(out), "coverage_by_content": None}
    titles = [title for title, *_ in sections(n)]
    assert COVERAGE_BY_CONTENT not in titles and "Subcategory coverage" in titles
    assert not any(row[0].startswith("coverage by request") for row in sections(n)[0][3])
