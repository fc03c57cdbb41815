"""A question judge that is a probe (issue 30): `synth probe train --questions` on the seed pools,
its verdicts in eval-judges and in the build's routing, the refusal to measure it on its own
training items, bad probe files and roles. Stand-in engine (its "pooled states" are made up, so
the figures here mean nothing); the real pooling runner is checked in test_engine_vllm.py and
the probe's figures are measured in BENCHMARKS.md."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from synth.cli import app
from synth.probe import question_items
from synth.templates import load_catalog

runner = CliRunner()


def _config(tmp_path: Path, repo_root: Path, probe: Path, model: str = "qwen-embed") -> Path:
    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"))
    raw["models"]["qwen-embed"] = {**raw["models"]["qwen-1.5b"], "task": "embed"}
    raw["roles"]["question_judges"] = [{"name": "question-probe", "model": model, "probe": str(probe)}]
    raw["judge_questions"]["threshold"] = 0.5
    path = tmp_path / "question-probe.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_a_question_probe_is_trained_on_the_seed_pools_used_and_not_measured_on_them(
        ray_session, repo_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    probe = tmp_path / "question-probe.json"
    config = _config(tmp_path, repo_root, probe)
    result = runner.invoke(app, ["probe", "train", "--questions", "--config", str(config), "--judge",
                                 "question-probe", "--out", str(probe), "--dry-run"])
    assert result.exit_code == 0, result.output
    record = json.loads(probe.read_text(encoding="utf-8"))
    catalog = load_catalog(repo_root / "templates", repo_root / "seeds")
    negatives = yaml.safe_load((repo_root / "seeds/probe_negatives.yaml").read_text(encoding="utf-8"))["questions"]
    items = question_items(catalog, negatives)
    pools = sum(len(texts) for s in catalog.scenarios.values()
                for pool in (s.pools.behaviors, s.pools.benign_topics) for texts in pool.values())
    assert record["kind"] == "question" and record["n"] == len(items) == 2 * pools + len(negatives)
    assert set(record["classes"]) == {*catalog.subcategories, "other"} and len(record["classes"]) == 40
    assert len(record["topic_coef"]) == 40 and len(record["harm_coef"]) == len(record["mean"]) == 1536
    assert {0.0 <= a <= 1.0 for a in record["train_accuracy"].values()} == {True}
    assert record["harm_C"] > 0 and record["topic_C"] > 0 and len(record["trained_on"]) == len(items)

    gold = repo_root / "seeds/gold/question_gold.jsonl"
    result = runner.invoke(app, ["eval-judges", str(gold), "--config", str(config), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["judges"]["question-probe"]["unparsed"] == 0.0
    assert {q["judged_subcategory"] in {*catalog.subcategories, "other"} for q in out["questions"]} == {True}
    assert {0.0 <= q["score"] <= 1.0 for q in out["questions"]} == {True}
    assert {q["harmful"] == (q["score"] > 0.5) for q in out["questions"]} == {True}
    # eval-judges scores the head alone: a gold question's subcategory is the answer, not a request
    # the probe may take as evidence, so a request prior in the config changes nothing here
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["judge_questions"]["request_prior"] = 0.9
    with_prior = tmp_path / "with-prior.yaml"
    with_prior.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    again = runner.invoke(app, ["eval-judges", str(gold), "--config", str(with_prior), "--dry-run", "--json"])
    assert again.exit_code == 0, again.output
    assert [q["judged_subcategory"] for q in json.loads(again.stdout)["questions"]] == \
        [q["judged_subcategory"] for q in out["questions"]]
    assert out["subcategory_accuracy"] < 0.9

    # a gold question that is a seed-pool item the probe was trained on is refused, by name
    first = json.loads(gold.read_text(encoding="utf-8").splitlines()[0])
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text(json.dumps({**first, "id": "leak-1", "question": items[0][0]}, ensure_ascii=False) + "\n",
                      encoding="utf-8")
    result = runner.invoke(app, ["eval-judges", str(leaked), "--config", str(config), "--dry-run"])
    assert result.exit_code == 2 and "'leak-1' is a training item of question judge 'question-probe'" in result.output

    # a probe trained on another model is refused before any request
    other = json.loads(probe.read_text(encoding="utf-8"))
    probe.write_text(json.dumps({**other, "model": "embedded:gemma3-270m"}), encoding="utf-8")
    result = runner.invoke(app, ["eval-judges", str(gold), "--config", str(config), "--dry-run"])
    assert result.exit_code == 2 and "was trained on model 'embedded:gemma3-270m'" in result.output, result.output


def test_a_question_probe_on_a_writing_model_or_a_pair_probe_file_exits_2(repo_root: Path, tmp_path: Path):
    config = _config(tmp_path, repo_root, tmp_path / "p.json", model="qwen-1.5b")
    result = runner.invoke(app, ["plan", str(config)])
    assert result.exit_code == 2 and "roles.question_judges[0]" in result.output and "task: embed" in result.output

    pair_probe = repo_root / "seeds/probes/qwen2.5-coder-1.5b-answer_harm.json"
    config = _config(tmp_path, repo_root, pair_probe)
    result = runner.invoke(app, ["eval-judges", str(repo_root / "seeds/gold/question_gold.jsonl"), "--config",
                                 str(config), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "question-probe" in result.output and "not a question probe record" in result.output


def test_the_shipped_question_probe_fits_the_shipped_templates_and_config(repo_root: Path):
    """seeds/probes/qwen2.5-coder-1.5b-questions.json reads the `probe` form as it is now, names
    the catalog's 39 subcategories and the config's model: an edit of either fails here, not in a
    team's build (retrain it: docs/judges.md)."""
    from synth.prepare import prepare
    from synth.stages.question_judge import check_question_probes, question_probes

    config, catalog = prepare(repo_root / "pipelines/demo-question-probe.yaml")
    check_question_probes(config, catalog)
    probe = question_probes(config)["question-probe"]
    assert sorted(probe.classes) == sorted([*catalog.subcategories, "other"]) and probe.dims == 1536


def test_questions_about_nothing_train_the_topic_head_only():
    """seeds/probe_negatives.yaml's items (topic `other`) teach the topic head that a question is
    about no subcategory; the harm head never sees them (taught that they are benign, it called
    short real harmful questions benign). Flipping their harm flag must change nothing but the
    topic head's data; the topic head must learn the `other` class."""
    import numpy as np

    from synth.probe import fit_question

    rng = np.random.default_rng(7)
    x = rng.normal(size=(90, 6))
    harmful = [i % 2 == 0 for i in range(90)]
    topics = ["gender" if i < 40 else "fraud" if i < 80 else "other" for i in range(90)]
    groups = [i // 2 for i in range(90)]
    as_benign = fit_question(x, harmful, topics, groups)
    flipped = fit_question(x, [h if t != "other" else not h for h, t in zip(harmful, topics)], topics, groups)
    assert as_benign["harm_coef"] == flipped["harm_coef"]
    assert as_benign["harm_intercept"] == flipped["harm_intercept"]
    assert set(as_benign["classes"]) == {"gender", "fraud", "other"}


def test_the_request_is_evidence_at_the_configured_prior():
    """judge_questions.request_prior: the probe's topic head takes the requested subcategory as
    evidence (Bayes' rule). A close second that was asked for wins; a class the head all but rules
    out stays out; with no prior the head alone decides, as eval-judges always scores it (a gold
    question's subcategory is the answer, not a request)."""
    import numpy as np
    import pandas as pd

    from synth.probe import QuestionProbe, encode_vector
    from synth.stages.question_judge import record_question_judgement

    classes = ("fraud", "gender", "other")
    # one-hot states; the head's logits for state i are row i of topic_coef.T
    logits = np.log(np.array([[0.5, 0.3, 0.2], [0.97, 0.01, 0.02]]))
    probe = QuestionProbe("p.json", "x", np.zeros(2), np.ones(2), np.zeros(2), 0.0, classes,
                          logits.T.copy(), np.zeros(3), frozenset())
    close, ruled_out = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert probe.topic(close)[0] == "fraud"
    assert probe.topic(close, "gender", 0.6)[0] == "gender"
    assert abs(probe.topics(close, "gender", 0.6).sum() - 1.0) < 1e-9
    assert probe.topic(ruled_out, "gender", 0.6)[0] == "fraud"
    assert probe.topic(close, "gender", None)[0] == "fraud"

    batch = pd.DataFrame([{"id": str(i), "question": "问？", "subcategory": "gender", "role": "question-probe",
                           "error": "", "prompt": "", "prompt_style": "chat", "text": encode_vector(v),
                           "logprobs": ""} for i, v in enumerate((close, ruled_out))])
    judged = record_question_judgement(batch, 0, {}, probe=probe, prior=0.6)["_qjudge0"].tolist()
    assert [j["subcategory"] for j in judged] == ["gender", "fraud"]
    assert "with the request (gender) at prior 0.6" in judged[0]["reason"]
    alone = record_question_judgement(batch, 0, {}, probe=probe)["_qjudge0"].tolist()
    assert [j["subcategory"] for j in alone] == ["fraud", "fraud"] and alone[0]["reason"] == "topic p=0.50"

