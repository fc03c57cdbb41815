"""Balance before export: caps per subcategory × label, target unsafe share, nothing vanishes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synth.balance import BALANCE_CAP, BALANCE_SHARE, apply_balance, water_fill
from synth.config import Balance, load_config
from synth.export import DIALOGUE_DEFAULTS, STAGE_COLUMNS, export_build, read_table
from synth.pipeline import PIPELINE
from synth.rows import REJECT_COLUMN, stable_id

FINAL_STAGE = PIPELINE.final.name  # the stage whose rows the exports read


def corpus(spec: dict[tuple[str, str], int]) -> pd.DataFrame:
    """Rows per (subcategory, label); abstract placeholder text."""
    rows = []
    for (sub, label), n in spec.items():
        for i in range(n):
            rows.append({"id": f"{sub}-{label}-{i:03d}", "scenario": "s", "scenario_name": "场景",
                         "subcategory": sub, "subcategory_name": sub, "label": label, "kind": "harmful",
                         "question": f"关于{sub}的示例问题{i}？", "response": f"示例回答{i}。"})
    return pd.DataFrame(rows)


def test_no_balance_config_cuts_nothing():
    df = corpus({("a", "安全"): 5, ("a", "不安全"): 2})
    kept, cut, counts = apply_balance(df, Balance(), seed=1)
    assert len(kept) == 7 and cut.empty and counts["cut"] == {BALANCE_CAP: 0, BALANCE_SHARE: 0}
    kept, cut, counts = apply_balance(df, None, seed=1)
    assert len(kept) == 7 and cut.empty


def test_cap_per_subcategory_and_label_is_deterministic():
    df = corpus({("a", "安全"): 10, ("a", "不安全"): 3, ("b", "安全"): 4})
    kept, cut, counts = apply_balance(df, Balance(max_per_subcategory_label=4), seed=7)
    assert kept.groupby(["subcategory", "label"]).size().to_dict() == {("a", "不安全"): 3, ("a", "安全"): 4, ("b", "安全"): 4}
    assert len(cut) == 6 and set(cut[REJECT_COLUMN]) == {BALANCE_CAP}
    assert counts["cut"] == {BALANCE_CAP: 6, BALANCE_SHARE: 0} and counts["rows_out"] == 11
    assert set(kept["id"]).isdisjoint(cut["id"]) and set(kept["id"]) | set(cut["id"]) == set(df["id"])
    # same rows kept whatever the input order; another seed picks others
    again, _, _ = apply_balance(df.sample(frac=1, random_state=3), Balance(max_per_subcategory_label=4), seed=7)
    assert list(again["id"]) == list(kept["id"])
    other, _, _ = apply_balance(df, Balance(max_per_subcategory_label=4), seed=8)
    assert set(other["id"]) != set(kept["id"])
    # adding rows to one subcategory does not change what another keeps
    more = pd.concat([df, corpus({("b", "安全"): 9}).assign(id=lambda d: d["id"] + "-new")])
    grown, _, _ = apply_balance(more, Balance(max_per_subcategory_label=4), seed=7)
    assert set(grown.loc[grown.subcategory == "a", "id"]) == set(kept.loc[kept.subcategory == "a", "id"])


def test_cap_keeps_both_kinds_of_a_label_where_both_are_there():
    # 安全 rows of one subcategory: 8 refusals of harmful questions, 2 benign look-alikes
    df = pd.concat([corpus({("a", "安全"): 8}),
                    corpus({("a", "安全"): 2}).assign(kind="benign", id=lambda d: d["id"] + "-benign")])
    for seed in range(5):
        kept, _, _ = apply_balance(df, Balance(max_per_subcategory_label=2), seed=seed)
        assert kept["kind"].value_counts().to_dict() == {"harmful": 1, "benign": 1}
    kept, _, _ = apply_balance(df, Balance(max_per_subcategory_label=5), seed=7)
    assert kept["kind"].value_counts().to_dict() == {"harmful": 3, "benign": 2}
    # one kind only: the cap takes the first rows in hash order, as before
    only = corpus({("a", "安全"): 8})
    kept, _, _ = apply_balance(only, Balance(max_per_subcategory_label=3), seed=7)
    ranked = sorted(only["id"], key=lambda i: stable_id("balance", 7, i))
    assert sorted(kept["id"]) == sorted(ranked[:3])


def test_conversations_are_capped_apart_from_single_questions():
    # 安全 harmful-kind rows of one subcategory: 9 single questions, 4 conversations (more turns)
    single = corpus({("a", "安全"): 9}).assign(turns=1)
    talks = corpus({("a", "安全"): 4}).assign(turns=3, id=lambda d: d["id"] + "-dialogue")
    df = pd.concat([single, talks])
    for seed in range(6):
        kept, cut, counts = apply_balance(df, Balance(max_per_subcategory_label=2), seed=seed)
        assert (kept["turns"] > 1).sum() == 2 and (kept["turns"] == 1).sum() == 2
        assert len(cut) == 9 and counts["cut"][BALANCE_CAP] == 9
    kept, _, _ = apply_balance(df, Balance(max_per_subcategory_label=4), seed=7)
    assert (kept["turns"] > 1).sum() == 4 and (kept["turns"] == 1).sum() == 4
    # within a shape the kinds still take turns: with a benign conversation there, a cap of 2
    # keeps one conversation of each kind
    benign = corpus({("a", "安全"): 1}).assign(kind="benign", turns=2, id=lambda d: d["id"] + "-benign")
    for seed in range(6):
        kept, _, _ = apply_balance(pd.concat([df, benign]), Balance(max_per_subcategory_label=2), seed=seed)
        assert kept[kept["turns"] > 1]["kind"].value_counts().to_dict() == {"harmful": 1, "benign": 1}
    # single questions only: the same rows as without the column
    plain, _, _ = apply_balance(single.drop(columns="turns"), Balance(max_per_subcategory_label=3), seed=7)
    shaped, _, _ = apply_balance(single, Balance(max_per_subcategory_label=3), seed=7)
    assert list(plain["id"]) == list(shaped["id"]) and len(plain) == 3


def test_unsafe_share_cuts_the_larger_label_from_the_largest_subcategories():
    df = corpus({("big", "不安全"): 50, ("small", "不安全"): 4, ("big", "安全"): 10, ("small", "安全"): 8})
    kept, cut, counts = apply_balance(df, Balance(unsafe_share=0.5, tolerance=0.0), seed=1)
    labels = kept["label"].value_counts().to_dict()
    assert labels == {"安全": 18, "不安全": 18}
    assert set(cut[REJECT_COLUMN]) == {BALANCE_SHARE} and len(cut) == 36
    # water-filling: the small subcategory keeps all 4 of its unsafe rows
    assert (kept[(kept.subcategory == "small") & (kept.label == "不安全")]).shape[0] == 4
    assert counts["unsafe_share_before"] == pytest.approx(54 / 72) and counts["unsafe_share_after"] == 0.5


def test_unsafe_share_within_tolerance_or_one_label_missing_cuts_nothing():
    df = corpus({("a", "不安全"): 11, ("a", "安全"): 9})
    kept, cut, _ = apply_balance(df, Balance(unsafe_share=0.5, tolerance=0.05), seed=1)
    assert cut.empty
    kept, cut, counts = apply_balance(df, Balance(unsafe_share=0.5, tolerance=0.0), seed=1)
    assert kept["label"].value_counts().to_dict() == {"不安全": 9, "安全": 9} and len(cut) == 2
    only = corpus({("a", "安全"): 5})
    kept, cut, counts = apply_balance(only, Balance(unsafe_share=0.5), seed=1)
    assert cut.empty and counts["share_skipped"] == "no rows labelled 不安全"
    low = corpus({("a", "不安全"): 2, ("a", "安全"): 10})
    kept, cut, _ = apply_balance(low, Balance(unsafe_share=0.4, tolerance=0.0), seed=1)
    assert kept["label"].value_counts().to_dict() == {"不安全": 2, "安全": 3}


def test_cap_then_share():
    df = corpus({("a", "不安全"): 10, ("b", "不安全"): 10, ("a", "安全"): 3, ("b", "安全"): 3})
    kept, cut, counts = apply_balance(df, Balance(max_per_subcategory_label=6, unsafe_share=0.5, tolerance=0.0), seed=2)
    assert counts["cut"] == {BALANCE_CAP: 8, BALANCE_SHARE: 6}
    assert kept.groupby(["subcategory", "label"]).size().to_dict() == {
        ("a", "不安全"): 3, ("a", "安全"): 3, ("b", "不安全"): 3, ("b", "安全"): 3}


def test_water_fill():
    assert water_fill({"a": 10, "b": 2, "c": 5}, 17, 0) == {"a": 10, "b": 2, "c": 5}
    assert water_fill({"a": 10, "b": 2, "c": 5}, 9, 0) == {"a": 4, "b": 2, "c": 3} or \
        water_fill({"a": 10, "b": 2, "c": 5}, 9, 0) == {"a": 3, "b": 2, "c": 4}
    assert sum(water_fill({"a": 10, "b": 2, "c": 5}, 9, 0).values()) == 9
    assert water_fill({"a": 3}, 0, 0) == {"a": 0}


def _config(tmp_path: Path, repo_root: Path, balance: dict) -> Path:
    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"), balance=balance)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_export_applies_balance_before_the_split_and_keeps_every_cut_row(tmp_path: Path, repo_root: Path):
    config_path = _config(tmp_path, repo_root, {"max_per_subcategory_label": 3, "unsafe_share": 0.5, "tolerance": 0.0})
    config, _, _ = load_config(config_path)
    df = corpus({("a", "不安全"): 8, ("b", "不安全"): 2, ("a", "安全"): 2, ("b", "安全"): 1})
    for column in STAGE_COLUMNS:
        if column not in df:
            df[column] = DIALOGUE_DEFAULTS.get(column, "")  # single-turn rows: turns 1
    df["judgements"] = [[{"judge": "j", "verdict": lab, "analysis": "", "raw": "", "error": ""}] for lab in df["label"]]
    df["elements"] = [{"behavior": "某类行为"}] * len(df)
    df["seed"] = range(len(df))
    df["unsafe_score"] = [0.9 if lab == "不安全" else 0.1 for lab in df["label"]]
    out = tmp_path / "build"
    rows_dir = out / "stages" / FINAL_STAGE / "rows"
    rows_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(df[list(STAGE_COLUMNS)], preserve_index=False), rows_dir / "part.parquet")
    # a filter stage's hard pool, with its reason
    hard_dir = out / "stages" / "filter_pairs" / "hard"
    hard_dir.mkdir(parents=True)
    hard = df.head(1).assign(id="h1", reject_reason="label_consistency: refusal_labelled_unsafe")
    pq.write_table(pa.Table.from_pandas(hard[[*STAGE_COLUMNS, "reject_reason"]], preserve_index=False),
                   hard_dir / "part.parquet")

    counts = export_build(out, config)
    # cap: 8 → 3 unsafe rows in "a"; share: 5 unsafe vs 3 safe → 3 unsafe kept
    assert counts["balance"]["cut"] == {BALANCE_CAP: 5, BALANCE_SHARE: 2}
    assert counts["balance"]["config"]["unsafe_share"] == 0.5
    corpus_rows = read_table(out / "corpus" / "data")
    cut = pd.read_parquet(out / "rejects" / "balance.parquet")
    assert len(corpus_rows) == counts["corpus_rows"] == 13 - 7
    assert counts["rejects"]["balance"] == len(cut) == 7
    assert set(cut["reject_reason"]) == {BALANCE_CAP, BALANCE_SHARE} and set(cut["stage"]) == {"balance"}
    assert set(corpus_rows["id"]) | set(cut["id"]) == set(df["id"])  # nothing vanishes
    libra = [json.loads(x) for x in (out / "libra_test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["id"] for r in libra} == set(corpus_rows["id"])
    merged = pd.read_parquet(out / "hard" / "hard.parquet")
    assert list(merged["hard_reason"]) == ["label_consistency: refusal_labelled_unsafe"]
    assert list(merged["hard_stage"]) == ["filter_pairs"] and "reject_reason" not in merged
    assert counts["hard_reasons"] == {"label_consistency: refusal_labelled_unsafe": 1}


def test_balance_does_not_change_the_stage_signatures(repo_root: Path):
    config, _, _ = load_config(repo_root / "pipelines/demo.yaml")
    other = config.model_copy(update={"balance": Balance(max_per_subcategory_label=1, unsafe_share=0.3)})
    assert other.fingerprint() == config.fingerprint()
