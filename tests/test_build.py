"""End-to-end dry-run builds (stand-in engine): exports, manifest reconciliation, a new scenario."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from synth.build import STAGES, run_build
from synth.config import load_config
from synth.export import LIBRA_EXTRA_KEYS, LIBRA_KEYS, read_table
from synth.stages.base import StageContext
from synth.stages.generation import Elements
from synth.templates import load_catalog


def test_every_export_is_written(demo_build):
    out, manifest = demo_build
    for path in ("corpus/README.md", "corpus/data", "libra_test.jsonl", "hard/hard.parquet", "rejects", "manifest.json",
                 "build.log"):
        assert (out / path).exists(), path
    assert manifest["dry_run"] is True
    assert all(m["engine"] == "standin" for m in manifest["models"].values())
    assert "内容警告" in (out / "corpus/README.md").read_text() or "Content warning" in (out / "corpus/README.md").read_text()


def test_corpus_loads_with_datasets_and_covers_the_taxonomy(demo_build):
    out, _ = demo_build
    corpus = datasets.load_dataset(str(out / "corpus"))
    assert set(corpus) == {"train", "validation"}
    df = pd.concat([corpus[s].to_pandas() for s in corpus])
    for column in ("id", "scenario", "subcategory", "kind", "attack", "question", "response", "responder", "label",
                   "analyze", "template_id"):
        assert column in df.columns, column
    assert set(df["label"]) == {"安全", "不安全"}
    assert set(df["kind"]) == {"harmful", "benign"}
    assert df["scenario"].nunique() == 7
    # Every subcategory yields labelled pairs: in the corpus, or in the controversial tier when
    # the judges disagree or the label checks doubt them (label_consistency, benign_flagged).
    tier = pd.read_parquet(out / "corpus/strict")
    labelled = pd.concat([df[["scenario", "subcategory"]], tier[["scenario", "subcategory"]]])
    assert labelled.drop_duplicates().shape[0] == 39
    assert df["id"].is_unique
    assert (df["attack"] != "none").any()
    # stratified split: every scenario × label stratum with ≥2 rows appears in validation
    validation = corpus["validation"].to_pandas()
    strata = df.groupby(["scenario", "label"]).size()
    for (scenario, label), n in strata.items():
        if n >= 2:
            assert ((validation["scenario"] == scenario) & (validation["label"] == label)).any()


def test_libra_test_view_has_exactly_the_libra_keys(demo_build):
    out, manifest = demo_build
    rows = [json.loads(line) for line in (out / "libra_test.jsonl").read_text(encoding="utf-8").splitlines()]
    # single-turn: the corpus's conversations are left out (the demo has some)
    assert manifest["export"]["dialogues"]["rows"] > 0
    assert len(rows) == manifest["export"]["corpus_rows"] - manifest["export"]["dialogues"]["rows"]
    for row in rows:
        assert tuple(row) == LIBRA_KEYS + LIBRA_EXTRA_KEYS
        assert row["source"] == "Synthetic Data"
        assert row["label"] in ("安全", "不安全")


def test_manifest_reconciles_stage_by_stage_and_with_the_files(demo_build):
    out, manifest = demo_build
    stages = manifest["stages"]
    assert [s["name"] for s in stages] == [s.name for s in STAGES]
    previous_out = 0
    for record, stage in zip(stages, STAGES):
        assert record["rows_in"] == previous_out, record
        accounted = record["rows_out"] + sum(record["rejected"].values()) + sum(record["diverted"].values())
        assert accounted == record["rows_in"] + record["created"], record
        if not stage.fans_out:
            assert record["created"] == 0, record
        on_disk = len(read_table(out / "stages" / stage.name / "rows"))
        assert on_disk == record["rows_out"], record
        rejects = pd.read_parquet(out / "rejects" / f"{stage.name}.parquet")
        assert len(rejects) == sum(record["rejected"].values()), record
        if len(rejects):
            assert rejects["reject_reason"].str.len().min() > 0
        previous_out = record["rows_out"]
    balance_cut = sum(manifest["export"]["balance"]["cut"].values())
    tier = manifest["export"]["controversial"]
    # the final stage's rows = the agreed corpus + what balance cut + the controversial tier
    assert manifest["export"]["corpus_rows"] == stages[-1]["rows_out"] - balance_cut - tier["rows"]
    assert tier["rows"] == tier["train"] + tier["validation"] == sum(tier["by_reason"].values()) > 0
    assert len(pd.read_parquet(out / "rejects/balance.parquet")) == balance_cut
    hard = pd.read_parquet(out / "hard/hard.parquet")
    # the hard pool: every stage's diverted rows, and a copy of the tier, each with its reason
    assert len(hard) == sum(s["diverted"].get("hard", 0) for s in stages) + tier["rows"]
    assert manifest["export"]["hard_rows"] == len(hard)
    disagreements = hard[hard["hard_reason"] == "judges_disagree"]
    assert len(disagreements) == tier["by_reason"]["judges_disagree"] > 0
    assert set(disagreements["hard_stage"]) == {"annotate"} and set(disagreements["label"]) == {"有争议"}
    # both verdicts of a disagreement are kept
    assert all(len(j) == 2 and {x["verdict"] for x in j} == {"安全", "不安全"} for j in disagreements["judgements"])


def test_every_shard_of_a_stage_has_the_stage_s_columns(demo_build):
    """One schema per stage output, whichever batch a shard came from (an Augment original once
    carried the question judge's columns and a rewrite did not: the empty rejects file then took
    the columns of whichever batch reached the driver first, and a resumed build differed)."""
    out, _ = demo_build
    for stage in STAGES:
        for folder in ("rows", "rejects"):
            files = sorted((out / "stages" / stage.name / folder).glob("*.parquet"))
            names = {tuple(pq.read_schema(f).names) for f in files}
            assert len(names) == 1, (stage.name, folder, names)
            if stage.columns is not None and folder == "rejects":
                assert set(next(iter(names))) == {*stage.columns, "stage"}, (stage.name, next(iter(names)))


def test_dedup_rejects_point_to_kept_rows(demo_build):
    out, _ = demo_build
    removed = pd.read_parquet(out / "rejects/dedup_questions.parquet")
    kept = set(read_table(out / "stages/dedup_questions/rows")["id"])
    assert set(removed["duplicate_of"]) <= kept


def test_rerun_reuses_every_stage_and_gives_identical_exports(demo_build, repo_root: Path):
    out, manifest = demo_build
    before = (out / "libra_test.jsonl").read_bytes()
    again = run_build(repo_root / "pipelines/demo.yaml", out, dry_run=True)
    assert all(s["reused"] for s in again["stages"])
    assert (out / "libra_test.jsonl").read_bytes() == before
    assert again["export"] == manifest["export"]


def _elements(repo_root: Path, seed: int, templates: Path | None = None, seeds: Path | None = None):
    config, tdir, sdir = load_config(repo_root / "pipelines/demo.yaml")
    config = config.model_copy(update={"seed": seed})
    catalog = load_catalog(templates or tdir, seeds or sdir)
    rows = Elements().run(StageContext(config=config, catalog=catalog), None).to_pandas()
    return rows.sort_values("id").reset_index(drop=True)


def test_element_sampling_is_deterministic(ray_session, repo_root: Path):
    a, b = _elements(repo_root, 1), _elements(repo_root, 1)
    pd.testing.assert_frame_equal(a, b)
    c = _elements(repo_root, 2)
    assert set(a["id"]).isdisjoint(set(c["id"]))
    assert len(a) == 39 * (2 + 2)  # the demo: 2 harmful + 2 benign calls per subcategory


NEW_SCENARIO = {
    "id": "test_new_scenario",
    "name_zh": "测试场景",
    "name_en": "Test Scenario",
    "description": "测试用的第八个场景，只用于验证新增场景无需修改代码。",
    "subcategories": [{"id": "test_sub_a", "name_zh": "测试子类甲", "name_en": "Test Sub A"},
                      {"id": "test_sub_b", "name_zh": "测试子类乙", "name_en": "Test Sub B"}],
    "harmful": {"chat": {"user": "请围绕“{{ subcategory.name_zh }}”和“{{ behavior }}”写{{ n }}个问题。"},
                "completion": "关于{{ behavior }}的{{ n }}个问题：\n1. 在{{ region }}怎样{{ behavior }}？\n2."},
    "benign": {"chat": {"user": "围绕“{{ benign_topic }}”写{{ n }}个安全的问题。"},
               "completion": "关于{{ benign_topic }}的{{ n }}个问题：\n1. {{ benign_topic }}是什么？\n2."},
}
NEW_POOLS = {
    "behaviors": {"test_sub_a": ["测试行为一", "测试行为二"], "test_sub_b": ["测试行为三", "测试行为四"]},
    "benign_topics": {"test_sub_a": ["测试话题一"], "test_sub_b": ["测试话题二"]},
}


def test_adding_a_scenario_is_one_yaml_file(ray_session, repo_root: Path, tmp_path: Path, demo_build):
    shutil.copytree(repo_root / "templates", tmp_path / "templates")
    shutil.copytree(repo_root / "seeds", tmp_path / "seeds")
    (tmp_path / "templates/test_new_scenario.yaml").write_text(yaml.safe_dump(NEW_SCENARIO, allow_unicode=True))
    (tmp_path / "seeds/scenarios/test_new_scenario.yaml").write_text(yaml.safe_dump(NEW_POOLS, allow_unicode=True))
    config = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text())
    config.update(templates=str(tmp_path / "templates"), seeds=str(tmp_path / "seeds"),
                  scenarios=["test_new_scenario", "hate_abuse"])
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))

    manifest = run_build(config_path, tmp_path / "out", dry_run=True)
    assert set(manifest["scenarios"]) == {"test_new_scenario", "hate_abuse"}
    rows = read_table(tmp_path / "out/stages/respond/rows")
    assert set(rows["scenario"]) == {"test_new_scenario", "hate_abuse"}
    assert set(rows.loc[rows["scenario"] == "test_new_scenario", "subcategory"]) == {"test_sub_a", "test_sub_b"}
    # Row ids are stable: the existing scenario's rows are the same as in the full demo build.
    demo_out, _ = demo_build
    demo_rows = read_table(demo_out / "stages/respond/rows")
    ours = rows[rows["scenario"] == "hate_abuse"].set_index("id")["response"]
    theirs = demo_rows[demo_rows["scenario"] == "hate_abuse"].set_index("id")["response"]
    # (dedup runs across scenarios, so a few rows may differ in which copy survives)
    common = ours.index.intersection(theirs.index)
    assert len(common) >= 0.9 * len(ours) > 0
    pd.testing.assert_series_equal(ours[common].sort_index(), theirs[common].sort_index())


def test_labelled_pairs_keep_the_responders_seed_and_finish_reason(demo_build):
    """The judges' requests and results have their own `seed` and `finish_reason`; a pair keeps its own."""
    out, _ = demo_build
    respond = read_table(out / "stages/respond/rows").set_index("id")
    parts = [read_table(out / "stages/annotate" / part) for part in ("rows", "rejects")]
    labelled = pd.concat([p for p in parts if len(p)])
    assert len(labelled) == len(respond)
    for row in labelled.itertuples():
        assert row.seed == respond.at[row.id, "seed"], row.id
        assert row.finish_reason == respond.at[row.id, "finish_reason"], row.id


def test_a_build_whose_filters_drop_every_pair_finishes_with_an_empty_corpus(ray_session, repo_root: Path, tmp_path):
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text())
    data.update(scenarios=["physical_mental_health"], templates=str(repo_root / "templates"),
                seeds=str(repo_root / "seeds"))
    data["filters"]["pairs"] = [{"name": "length", "params": {"field": "response", "min_chars": 100000}}]
    config = tmp_path / "drop-all.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    manifest = run_build(config, tmp_path / "out", dry_run=True)
    stages = {s["name"]: s for s in manifest["stages"]}
    # a filter that reads no label runs before annotate: the judges get no request at all
    assert stages["filter_responses"]["rows_out"] == 0 and stages["filter_responses"]["rows_in"] > 0
    assert stages["annotate"]["rows_in"] == 0 and not stages["annotate"]["requests"].get("sent")
    assert stages["filter_pairs"]["rows_in"] == stages["filter_pairs"]["rows_out"] == 0
    assert stages["dedup_pairs"]["rows_in"] == 0 and stages["dedup_pairs"]["rows_out"] == 0
    train = pq.read_table(tmp_path / "out/corpus/data/train-00000-of-00001.parquet").to_pandas()
    assert len(train) == 0 and {"question", "response", "label"} <= set(train.columns)
    assert len(read_table(tmp_path / "out/rejects")) >= stages["filter_responses"]["rows_in"]


@pytest.mark.parametrize("damage, expected", [
    ("bogus_key: 1\n", "bogus_key"),
    ("roles: {generator: {name: g, model: nope}}\n", "roles"),
    # vLLM reads VLLM_CPU_KVCACHE_SPACE as whole GiB: a fraction is refused here, not by a crashed engine
    ("models: {qwen-1.5b: {vllm: {cpu_kvcache_gib: 0.5}}}\n", "cpu_kvcache_gib"),
])
def test_a_config_that_fails_validation_writes_nothing_into_out(repo_root: Path, tmp_path: Path, damage, expected):
    """The real command, in a process of its own (its output redirection to build.log is real there)."""
    import subprocess
    import sys

    config = tmp_path / "bad.yaml"
    config.write_text(f"extends: {repo_root / 'pipelines/demo.yaml'}\ntemplates: {repo_root / 'templates'}\n"
                      f"seeds: {repo_root / 'seeds'}\n{damage}", encoding="utf-8")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "synth.cli", "build", str(config), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stdout + result.stderr and str(config) in result.stdout + result.stderr
    assert not out.exists()


def test_a_config_in_another_directory_extends_one_whose_paths_stay_its_own(repo_root: Path, tmp_path: Path):
    """demo-probe.yaml extends demo.yaml; a team's file elsewhere extends demo-probe.yaml: templates,
    seeds and the probe resolve against the file that names them, this file's own paths against it."""
    from synth.config import load_config

    examples = tmp_path / "examples.jsonl"
    shutil.copy(repo_root / "seeds/gold/judge_holdout.jsonl", examples)
    config = tmp_path / "team" / "mine.yaml"
    config.parent.mkdir()
    config.write_text(f"extends: {repo_root / 'pipelines/demo-probe.yaml'}\nname: mine\n"
                      "annotate: {examples: {path: ../examples.jsonl}}\n", encoding="utf-8")
    loaded, templates, seeds = load_config(config)
    assert templates == (repo_root / "templates").resolve() and seeds == (repo_root / "seeds").resolve()
    probe = next(r.probe for r in loaded.roles.judges if r.probe is not None)
    assert probe == (repo_root / "seeds/probes/qwen2.5-coder-1.5b-answer_harm.json").resolve()
    assert loaded.annotate.examples.path == examples.resolve() and loaded.name == "mine"
