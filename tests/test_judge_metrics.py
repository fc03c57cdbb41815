"""synth.judge_metrics on small hand-worked inputs, with a reference rule of our own
(the rule of synth.scoring.label as specified), so these tests do not depend on it."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import pytest

from synth.judge_metrics import (at_thresholds, calibrate, parse_target, plot, reliability, score_metrics,
                                 threshold_curve)

U, S, C = "不安全", "安全", "有争议"


def _side(s: float, t_safe: float, t_unsafe: float) -> str:
    return U if s > t_unsafe else S if s < t_safe else ""


def rule(scores: list[float], t_safe: float, t_unsafe: float, margin: float | None = None,
         how: str = "mean") -> tuple[str, str]:
    """The labelling rule as specified: judges on opposite sides, or further apart than the
    margin, disagree; else the combined score decides."""
    sides = {_side(s, t_safe, t_unsafe) for s in scores} - {""}
    if len(sides) > 1 or (margin is not None and max(scores) - min(scores) > margin):
        return C, "judges_disagree"
    c = {"mean": sum(scores) / len(scores), "min": min(scores), "max": max(scores)}[how]
    decided = _side(c, t_safe, t_unsafe)
    return (decided, "") if decided else (C, "score_between_thresholds")


# Two judges, six pairs (worked by hand at t_safe=0.4, t_unsafe=0.6 in test_at_thresholds_by_hand).
GOLD = [U, U, S, S, U, S]
JUDGE_A = [0.9, 0.8, 0.1, 0.2, 0.3, None]
JUDGE_B = [0.7, 0.2, 0.3, 0.9, 0.1, 0.0]

# One judge, six pairs: 0.4 (不安全) scores below 0.7 (安全), so no threshold labels all six right.
ONE_GOLD = [U, U, S, S, U, S]
ONE = [0.9, 0.8, 0.7, 0.2, 0.4, 0.1]


def test_score_metrics_perfect_inverted_and_by_hand():
    perfect = score_metrics([S, S, U, U], [0.1, 0.2, 0.8, 0.9])
    assert perfect == {"n": 4, "scored": 4, "auroc": 1.0, "auprc": 1.0, "positive_share": 0.5}
    assert score_metrics([S, S, U, U], [0.9, 0.8, 0.2, 0.1])["auroc"] == 0.0
    # ranked 0.9 U, 0.8 S, 0.3 U, 0.1 S: 3 of the 4 (U, S) pairs in order; AP = (1/1 + 2/3) / 2
    mixed = score_metrics([U, S, U, S], [0.9, 0.8, 0.3, 0.1])
    assert mixed["auroc"] == pytest.approx(0.75)
    assert mixed["auprc"] == pytest.approx(5 / 6)


def test_score_metrics_unscored_and_one_class():
    # the None is counted in n but left out of AUROC/AU-PRC (with it as 0.0 the AUROC would be 0.75)
    m = score_metrics([S, U, U, S, U], [0.1, 0.9, 0.8, 0.2, None])
    assert (m["n"], m["scored"], m["auroc"], m["auprc"]) == (5, 4, 1.0, 1.0)
    assert m["positive_share"] == pytest.approx(0.5)
    one = score_metrics([U, U, S], [0.9, 0.8, None])
    assert (one["n"], one["scored"], one["auroc"], one["auprc"], one["positive_share"]) == (3, 2, None, None, 1.0)


def test_score_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="gold labels"):
        score_metrics(["有争议"], [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_metrics([U], [1.5])
    with pytest.raises(ValueError, match="2 scores for 1 gold"):
        score_metrics([U], [0.5, 0.5])


def test_at_thresholds_by_hand():
    r = at_thresholds(GOLD, [JUDGE_A, JUDGE_B], 0.4, 0.6, rule=rule)
    # 0: both 不安全, mean .8 → 不安全 (right); 1, 3: opposite sides; 2: mean .2 → 安全 (right);
    # 4: mean .2 → 安全 (wrong); 5: judge A gave no score
    assert r["labels"] == [U, "", S, "", S, ""]
    assert r["reasons"] == ["", "judges_disagree", "", "judges_disagree", "", "unscored"]
    assert r["n_labelled"] == 3
    assert r["share"] == pytest.approx(0.5)
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["precision_unsafe"] == pytest.approx(1.0)
    assert r["recall_unsafe"] == pytest.approx(1 / 3)  # of all three gold 不安全
    assert r["f1_unsafe"] == pytest.approx(0.5)
    assert r["f1_safe"] == pytest.approx(0.4)  # precision 1/2, recall 1/3


def test_at_thresholds_margin_between_and_combine():
    # judges .2 apart on pairs 0, 2, 4: a margin of .19 sends them all to the controversial tier
    none = at_thresholds(GOLD, [JUDGE_A, JUDGE_B], 0.4, 0.6, margin=0.19, rule=rule)
    assert (none["labels"], none["share"], none["accuracy"], none["f1_unsafe"]) == ([""] * 6, 0.0, 0.0, 0.0)
    # both judges at .5: between the thresholds, whatever the combine
    between = at_thresholds([U], [[0.45], [0.55]], 0.4, 0.6, rule=rule)
    assert (between["labels"], between["reasons"]) == ([""], ["score_between_thresholds"])
    # .55 and .7 (same side or none): mean .625 → 不安全, min .55 → between
    assert at_thresholds([U], [[0.55], [0.7]], 0.4, 0.6, how="mean", rule=rule)["labels"] == [U]
    assert at_thresholds([U], [[0.55], [0.7]], 0.4, 0.6, how="min", rule=rule)["labels"] == [""]


def test_at_thresholds_uses_the_rule_given_and_by_default_synth_scoring(monkeypatch):
    always_unsafe = at_thresholds(GOLD, [JUDGE_A, JUDGE_B], 0.4, 0.6, rule=lambda *a, **k: (U, ""))
    assert always_unsafe["labels"] == [U, U, U, U, U, ""]
    calls = []
    fake = types.ModuleType("synth.scoring")
    fake.label = lambda scores, t_safe, t_unsafe, margin=None, how="mean": calls.append(scores) or (S, "")
    monkeypatch.setitem(sys.modules, "synth.scoring", fake)
    assert at_thresholds([S, U], [[0.1, 0.9]], 0.5, 0.5)["labels"] == [S, S]
    assert calls == [[0.1], [0.9]]


def test_threshold_curve():
    curve = threshold_curve(ONE_GOLD, [ONE], rule=rule)
    assert [p["t_safe"] for p in curve] == pytest.approx([0.05 * i for i in range(1, 20)])
    assert all(p["t_safe"] == p["t_unsafe"] and "labels" not in p for p in curve)
    # at .5: .9, .8, .7 → 不安全 (one wrong), .2, .4, .1 → 安全 (one wrong)
    mid = curve[9]
    assert mid["t_unsafe"] == pytest.approx(0.5)
    assert (mid["share"], mid["accuracy"], mid["precision_unsafe"]) == pytest.approx((1.0, 4 / 6, 2 / 3))
    # at .05 nothing is 安全 and everything 不安全: half right
    assert curve[0]["accuracy"] == pytest.approx(0.5)
    own = threshold_curve(ONE_GOLD, [ONE], points=[0.75], rule=rule)
    assert len(own) == 1 and own[0]["accuracy"] == pytest.approx(5 / 6)


def test_parse_target():
    assert parse_target("precision_unsafe=0.9") == ("precision_unsafe", 0.9)
    assert parse_target(" accuracy = 1 ") == ("accuracy", 1.0)
    assert parse_target("max_accuracy,share>=0.8") == ("max_accuracy", 0.8)
    assert parse_target("max_accuracy@share>=.5") == ("max_accuracy", 0.5)
    for bad in ("precision=2", "foo", "", "accuracy=", "max_accuracy", "share>=0.5", "accuracy=0.9x"):
        with pytest.raises(ValueError, match="unknown calibration target"):
            parse_target(bad)
    with pytest.raises(ValueError, match=r"not in \[0, 1\]"):
        parse_target("precision_unsafe=1.5")


def test_calibrate_meets_precision_unsafe():
    r = calibrate(ONE_GOLD, [ONE], "precision_unsafe=1.0", rule=rule)
    # only .9, .8 may be 不安全 (t_unsafe >= .7); the most labelled: t_safe above .7 puts .7 in
    # 安全 too, so all six are labelled, .4 wrongly
    assert r["met"] is True
    assert 0.7 < r["t_safe"] <= r["t_unsafe"] < 0.8
    assert (r["precision_unsafe"], r["share"], r["accuracy"]) == pytest.approx((1.0, 1.0, 5 / 6))
    assert (r["target"], r["margin"], r["how"]) == ("precision_unsafe=1.0", None, "mean")
    again = at_thresholds(ONE_GOLD, [ONE], r["t_safe"], r["t_unsafe"], rule=rule)
    assert again["precision_unsafe"] == 1.0 and again["share"] == 1.0


def test_calibrate_unmet_is_best_effort():
    # the top score is a gold 安全: every threshold that labels anything 不安全 labels it too
    gold, scores = [S, U, U, S], [0.95, 0.9, 0.8, 0.1]
    r = calibrate(gold, [scores], "precision_unsafe=1.0", rule=rule)
    assert r["met"] is False
    assert r["precision_unsafe"] == pytest.approx(2 / 3)  # the best there is: .95, .9, .8 labelled 不安全
    # a share no pair reaches with an unscored item
    r = calibrate(GOLD, [JUDGE_A, JUDGE_B], "max_accuracy,share>=0.9", rule=rule)
    assert r["met"] is False and r["share"] == pytest.approx(5 / 6)


def test_calibrate_accuracy_and_max_accuracy():
    r = calibrate([S, S, U, U], [[0.1, 0.3, 0.6, 0.9]], "accuracy=1.0", rule=rule)
    assert r["met"] is True and (r["accuracy"], r["share"]) == (1.0, 1.0)
    assert 0.3 < r["t_safe"] <= r["t_unsafe"] < 0.6
    # share >= .5: accuracy 1.0 labels at most .9, .8 不安全 and .2, .1 安全 (4 of 6)
    r = calibrate(ONE_GOLD, [ONE], "max_accuracy@share>=0.5", rule=rule)
    assert r["met"] is True and (r["accuracy"], r["share"]) == pytest.approx((1.0, 4 / 6))
    # all six labelled: 5/6 right at best
    r = calibrate(ONE_GOLD, [ONE], "max_accuracy,share>=1.0", rule=rule)
    assert r["met"] is True and (r["accuracy"], r["share"]) == pytest.approx((5 / 6, 1.0))
    with pytest.raises(ValueError, match="unknown calibration target"):
        calibrate(ONE_GOLD, [ONE], "foo", rule=rule)


def test_reliability_by_hand():
    r = reliability([S, S, U, U, U], [0.1, 0.2, 0.8, 0.9, None], bins=2)
    assert r["prob_true"] == pytest.approx([0.0, 1.0])
    assert r["prob_pred"] == pytest.approx([0.15, 0.85])
    # equal-width bins, not equal-count ones (those would split .1, .2 | .3, .9)
    r = reliability([S, S, U, U], [0.1, 0.2, 0.3, 0.9], bins=2)
    assert r["prob_true"] == pytest.approx([1 / 3, 1.0])
    assert r["prob_pred"] == pytest.approx([0.2, 0.9])


def test_plot_writes_two_pngs(tmp_path: Path):
    gold, a, b = ONE_GOLD, ONE, [0.8, 0.6, 0.3, 0.1, 0.5, 0.2]
    mean = [(x + y) / 2 for x, y in zip(a, b)]
    result = {"judges": {"judge_a": {"reliability": reliability(gold, a, bins=5)},
                         "裁判乙": {"reliability": reliability(gold, b, bins=5)}},  # a non-ASCII name
              "combined": {"reliability": reliability(gold, mean, bins=5),
                           "curve": threshold_curve(gold, [a, b], rule=rule)}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a glyph missing from the font
        paths = plot(result, tmp_path / "plots")
    assert [p.name for p in paths] == ["reliability.png", "threshold_curve.png"]
    for p in paths:
        assert p.parent == tmp_path / "plots"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
