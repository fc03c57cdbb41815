"""What a rebuild into the same directory reruns: each stage's signature is its own
(config slice, templates, models, input), so a change reruns exactly the stages that
depend on it, and throughput settings or paths rerun nothing.

Real dry-run builds (stand-in engine, real Ray, real parquet) in this process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from synth.build import STAGES, run_build
from test_resume import small_config

NAMES = [s.name for s in STAGES]


def reused(manifest: dict) -> dict[str, bool]:
    return {s["name"]: s["reused"] for s in manifest["stages"]}


def why(manifest: dict) -> dict[str, str]:
    return {s["name"]: s["why"] for s in manifest["stages"]}


def stage(manifest: dict, name: str) -> dict:
    return next(s for s in manifest["stages"] if s["name"] == name)


@pytest.fixture(scope="module")
def reference(ray_session, repo_root: Path, tmp_path_factory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("incremental")
    config = small_config(repo_root, tmp)
    out = tmp / "out"
    manifest = run_build(config, out, dry_run=True)
    assert set(why(manifest).values()) == {"no finished output"}
    return config, out, manifest


def rebuild(reference, tmp_path: Path, edit=None, **changes) -> dict:
    """Copy the reference build, apply `changes` to its config (dotted keys) and `edit(config)`, rebuild."""
    config, out, _ = reference
    data = yaml.safe_load(config.read_text())
    if edit is not None:
        edit(data)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data, allow_unicode=True))
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return run_build(changed, copy, dry_run=True)


def test_an_unchanged_rebuild_reuses_every_stage(reference, tmp_path: Path):
    manifest = rebuild(reference, tmp_path)
    assert set(why(manifest).values()) == {"reused"}


def test_a_label_filter_change_reruns_filter_pairs_and_what_follows(reference, tmp_path: Path):
    _, _, before = reference
    config = yaml.safe_load(reference[0].read_text())
    pairs = [f for f in config["filters"]["pairs"] if f["name"] != "benign_flagged"]
    assert len(pairs) < len(config["filters"]["pairs"])
    manifest = rebuild(reference, tmp_path, **{"filters.pairs": pairs})
    first = NAMES.index("filter_pairs")
    assert reused(manifest) == {n: i < first for i, n in enumerate(NAMES)}
    assert why(manifest)["filter_pairs"] == "changed: config"
    assert why(manifest)["dedup_pairs"] == "changed: input"
    assert all(not s["requests"].get("sent") for s in manifest["stages"] if not s["reused"])


def test_a_response_filter_change_reruns_from_filter_responses_and_judges_only_new_pairs(reference, tmp_path: Path):
    _, _, before = reference
    config = yaml.safe_load(reference[0].read_text())
    pairs = [f for f in config["filters"]["pairs"] if f["name"] != "repetition"]
    assert len(pairs) < len(config["filters"]["pairs"])
    manifest = rebuild(reference, tmp_path, **{"filters.pairs": pairs})
    first = NAMES.index("filter_responses")
    assert reused(manifest) == {n: i < first for i, n in enumerate(NAMES)}
    assert why(manifest)["filter_responses"] == "changed: config"
    assert why(manifest)["annotate"] == "changed: input"
    # the pairs judged before are served from the request cache; only the pairs that the
    # repetition filter dropped last time reach the judges now
    dropped = sum(n for r, n in stage(before, "filter_responses")["rejected"].items() if r.startswith("repetition"))
    judges = len(yaml.safe_load(reference[0].read_text())["roles"]["judges"])
    assert stage(manifest, "annotate")["requests"].get("sent", 0) == judges * dropped


def test_throughput_settings_rerun_nothing(reference, tmp_path: Path):
    def throughput(data):  # every model's (model keys hold dots: qwen-1.5b)
        for spec in data["models"].values():
            spec["vllm"].update(batch_size=7, concurrency=3, max_concurrent_batches=2)

    manifest = rebuild(reference, tmp_path, edit=throughput, **{
        "dedup.pairs.batch_size": 99, "dedup.questions.concurrency": 1, "export.validation_share": 0.2,
    })
    assert set(why(manifest).values()) == {"reused"}


def test_a_copy_elsewhere_naming_the_same_templates_by_another_path_reuses_everything(reference, repo_root: Path,
                                                                                      tmp_path: Path):
    templates, seeds = tmp_path / "t", tmp_path / "s"
    shutil.copytree(repo_root / "templates", templates)
    shutil.copytree(repo_root / "seeds", seeds)
    manifest = rebuild(reference, tmp_path, templates=str(templates), seeds=str(seeds))
    assert set(why(manifest).values()) == {"reused"}


def test_a_judge_template_change_reruns_annotate_and_what_follows_only(reference, repo_root: Path, tmp_path: Path):
    templates = tmp_path / "t"
    shutil.copytree(repo_root / "templates", templates)
    judge = templates / "shared" / "judge.yaml"
    judge.write_text(judge.read_text(encoding="utf-8") + "\n# reworded\n", encoding="utf-8")
    manifest = rebuild(reference, tmp_path, templates=str(templates))
    first = NAMES.index("annotate")
    assert reused(manifest) == {n: i < first for i, n in enumerate(NAMES)}
    assert why(manifest)["annotate"] == "changed: templates"


def test_a_responder_sampling_change_reruns_converse_respond_and_what_follows_only(reference, tmp_path: Path):
    config = yaml.safe_load(reference[0].read_text())
    responders = config["roles"]["responders"]
    responders[0]["sampling"]["temperature"] = 0.5
    manifest = rebuild(reference, tmp_path, **{"roles.responders": responders})
    # converse first: the responders answer the earlier turns of the demo's conversations
    assert config["dialogues"]["share"] > 0
    first = NAMES.index("converse")
    assert reused(manifest) == {n: i < first for i, n in enumerate(NAMES)}
    assert why(manifest)["converse"] == "changed: models" and "models" in why(manifest)["respond"]
    respond = next(s for s in manifest["stages"] if s["name"] == "respond")
    assert respond["requests"]["sent"] > 0  # the changed role's requests are new


def test_the_manifest_records_each_stage_input_hash(reference):
    _, out, _ = reference
    for name in NAMES:
        marker = json.loads((out / "stages" / name / "_SUCCESS.json").read_text())
        assert set(marker["inputs"]) == {"code", "engine", "config", "templates", "models", "input"}
