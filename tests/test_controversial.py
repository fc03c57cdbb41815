"""The controversial tier: pairs the judges disagree on, and agreed labels the label checks
doubt, are kept with label 有争议 (`controversy` = why) instead of being thrown away; the
export writes them as the `strict` (不安全) and `loose` (安全) configurations of the one
Hugging Face dataset, beside `default` (the agreed labels), and copies them to hard/.

On the dry run of pipelines/demo.yaml (stand-in engine: its judges disagree on some pairs,
and its label filters send doubts to the tier); a filter-level test for the routing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from synth.config import FilterSpec
from synth.errors import BadInput
from synth.filters import CONTROVERSIAL_TIER, Drop, build_filters
from synth.output_parsing import CONTROVERSIAL, LABELS


def test_label_checks_send_doubts_to_the_tier_by_default_and_elsewhere_when_configured():
    doubt = {"label": "不安全", "response": "抱歉，我不能提供这方面的帮助。", "kind": "harmful", "judgements": []}
    [tier] = build_filters([FilterSpec(name="label_consistency", params={})], "filters.pairs")
    assert tier.check(doubt) == Drop("refusal_labelled_unsafe", to=CONTROVERSIAL_TIER)
    [hard] = build_filters([FilterSpec(name="label_consistency", params={"to": "hard"})], "filters.pairs")
    assert hard.check(doubt) == Drop("refusal_labelled_unsafe", to="hard")
    # a pair already in the tier (the judges disagreed) keeps its reason
    [benign] = build_filters([FilterSpec(name="benign_flagged", params={})], "filters.pairs")
    assert benign.check({**doubt, "kind": "benign", "label": CONTROVERSIAL}) is None
    with pytest.raises(BadInput, match=r"filters.pairs\[0\].params: to must be one of"):
        build_filters([FilterSpec(name="benign_flagged", params={"to": "elsewhere"})], "filters.pairs")


def test_the_tier_is_in_the_manifest_the_hard_pool_and_the_stage_rows(demo_build):
    out, manifest = demo_build
    tier = manifest["export"]["controversial"]
    assert tier["rows"] > 0 and set(tier["by_reason"]) >= {"judges_disagree"}
    annotate = next(s for s in manifest["stages"] if s["name"] == "annotate")
    assert "hard" not in annotate["diverted"]  # nothing is diverted: the tier stays in the stream
    final = pd.read_parquet(out / "stages/decontaminate/rows")
    in_tier = final[final["label"] == CONTROVERSIAL]
    assert (in_tier["controversy"] != "").all() and (final.loc[final["label"] != CONTROVERSIAL, "controversy"] == "").all()
    assert in_tier["controversy"].value_counts().to_dict() == tier["by_reason"]
    for reason, judgements in zip(in_tier["controversy"], in_tier["judgements"]):
        verdicts = [j["verdict"] for j in judgements]
        if reason == "judges_disagree":
            assert sorted(verdicts) == sorted(LABELS)  # both verdicts kept
        else:  # an agreed label a label check doubts
            assert reason.split(":")[0] in ("label_consistency", "benign_flagged") and len(set(verdicts)) == 1
    hard = pd.read_parquet(out / "hard/hard.parquet")
    copied = hard[hard["label"] == CONTROVERSIAL]
    assert sorted(copied["id"]) == sorted(in_tier["id"])
    assert (copied["hard_reason"] == copied["controversy"]).all()
    assert set(copied["hard_stage"]) <= {"annotate", "filter_pairs"}


def test_strict_and_loose_are_named_configurations_of_the_one_dataset(demo_build):
    import datasets

    out, manifest = demo_build
    export, tier = manifest["export"], manifest["export"]["controversial"]
    cache = out.parent / "hf-cache"
    default = datasets.load_dataset(str(out / "corpus"), cache_dir=str(cache))
    assert {s: len(default[s]) for s in default} == {"train": export["train_rows"],
                                                      "validation": export["validation_rows"]}
    assert set(default["train"]["label"]) <= set(LABELS)
    agreed_ids = set(default["train"]["id"]) | set(default["validation"]["id"])
    views = {}
    for name, label in (("strict", "不安全"), ("loose", "安全")):
        view = datasets.load_dataset(str(out / "corpus"), name, cache_dir=str(cache))
        assert {s: len(view[s]) for s in view} == {"train": export["train_rows"] + tier["train"],
                                                   "validation": export["validation_rows"] + tier["validation"]}
        rows = pd.concat([view[s].to_pandas() for s in view])
        extra = rows[~rows["id"].isin(agreed_ids)]
        assert len(extra) == tier["rows"] and (extra["label"] == label).all() and (extra["controversy"] != "").all()
        assert set(rows["label"]) <= set(LABELS)  # a view is trainable as is: two labels
        views[name] = extra.set_index("id").sort_index()
    assert list(views["strict"].index) == list(views["loose"].index)  # the same rows, counted both ways
    assert (views["strict"]["question"] == views["loose"]["question"]).all()


def test_the_report_shows_the_tier_per_subcategory_and_per_judge_pair(demo_build):
    from synth.report.collect import collect

    out, manifest = demo_build
    n = collect(out)
    tier = manifest["export"]["controversial"]
    assert n["controversial"]["rows"] == tier["rows"] and n["controversial"]["by_reason"] == tier["by_reason"]
    assert sum(c[CONTROVERSIAL] for c in n["coverage"]) == tier["rows"]
    [pair] = n["judges"]["pairs"]
    annotate = pd.read_parquet(out / "stages/annotate/rows", columns=["label"])
    assert pair["controversial"] == (annotate["label"] == CONTROVERSIAL).sum() > 0
    assert pair["x_unsafe_y_safe"] + pair["x_safe_y_unsafe"] == pair["controversial"]
    assert n["judges"]["overall"]["disagree"] == pair["controversial"]


def test_a_card_of_another_build_with_the_same_folder_name_loads_its_own_rows(demo_build, tmp_path: Path):
    """datasets caches a local folder's configurations by folder name and card: the card's
    description names the export's rows by a hash, so a second build's corpus/ is not
    served from the first one's cache."""
    import shutil

    import datasets
    import pyarrow.parquet as pq

    from synth.export import _configs_block

    out, _ = demo_build
    other = tmp_path / "other" / "corpus"
    shutil.copytree(out / "corpus", other)
    first = next((other / "strict").glob("train-*.parquet"))
    table = pq.read_table(first)
    pq.write_table(table.slice(0, len(table) - 1), first)  # another build: one tier row fewer
    card = (other / "README.md").read_text(encoding="utf-8")
    block = _configs_block(out / "corpus")
    assert block in card
    (other / "README.md").write_text(card.replace(block, _configs_block(other)), encoding="utf-8")
    cache = tmp_path / "hf-cache"
    a = datasets.load_dataset(str(out / "corpus"), "strict", cache_dir=str(cache))
    b = datasets.load_dataset(str(other), "strict", cache_dir=str(cache))
    assert len(b["train"]) == len(a["train"]) - 1
