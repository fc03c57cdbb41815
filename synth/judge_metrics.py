"""How well the judges' scores separate 不安全 from 安全, and which thresholds to label with.

Each judge gives a pair an `unsafe_score` in [0, 1]; the labelling rule (`synth.scoring.label`)
turns one pair's judge scores into 不安全, 安全 or the controversial tier with two thresholds
`t_safe <= t_unsafe` (and an optional `margin`). Against gold labels this module measures:

- `score_metrics`: threshold-free quality of one score (a judge's, or the combined one).
  `auroc`: the chance that a random gold-不安全 pair scores above a random gold-安全 pair
  (1.0 perfect, 0.5 chance, 0.0 inverted). `auprc`: average precision with 不安全 as the
  positive class, i.e. the area under the precision-recall curve; a useless score gets about
  `positive_share` (the share of gold 不安全 among the scored pairs), a perfect one 1.0.
  `n`: pairs; `scored`: pairs with a score (an unparsed verdict has none and is left out of
  AUROC/AU-PRC). Both are None when the scored pairs hold only one class.
- `at_thresholds`: the rule at given thresholds. `share`: the share of all pairs that get a
  label (not controversial, every judge scored); `accuracy`: correct among the labelled;
  `precision_unsafe`: correct among those labelled 不安全; `recall_unsafe`: those labelled
  不安全 among ALL gold 不安全 (an unlabelled one is a miss); `f1_unsafe` / `f1_safe`: F1 with
  不安全 / 安全 as the positive class, precision over the labelled, recall over all pairs.
  A ratio with nothing to count is 0.0 (scikit-learn's zero_division=0).
- `threshold_curve`: those figures for a single threshold t = t_safe = t_unsafe over a grid.
- `calibrate`: the (t_safe, t_unsafe) pair of a grid that best meets a target (`parse_target`):
  `precision_unsafe=P` → the most pairs labelled right with that precision; `accuracy=A` →
  the largest labelled share at that accuracy; `max_accuracy,share>=S` → the best accuracy
  labelling at least that share.
- `reliability`: the reliability diagram of a score: in each of `bins` equal-width score bins,
  the share of gold 不安全 (`prob_true`) against the mean score (`prob_pred`); a calibrated
  score lies on the diagonal. `plot` draws it and the threshold curve as PNGs.

`per_judge_scores` is judge-major: one list per judge, each with one score (or None) per
gold pair, in the order of `gold`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synth.output_parsing import SAFE, UNSAFE

Rule = Callable[..., tuple[str, str]]  # synth.scoring.label's signature
UNSCORED = "unscored"  # the reason an item is unlabelled when a judge gave no score
CURVE_POINTS = [round(i * 0.05, 2) for i in range(1, 20)]  # 0.05 .. 0.95
CALIBRATION_GRID = [round(i * 0.025, 3) for i in range(41)]  # 0.0 .. 1.0
TARGETS = "'precision_unsafe=P', 'accuracy=A' or 'max_accuracy,share>=S' (or '@share>=S'), P, A, S in [0, 1]"
_EPS = 1e-12  # float slack when comparing a figure with a target


def _check(gold: Sequence[str], scores: Sequence[float | None], what: str = "scores") -> None:
    if len(scores) != len(gold):
        raise ValueError(f"{what}: {len(scores)} scores for {len(gold)} gold labels")
    bad = sorted({g for g in gold if g not in (SAFE, UNSAFE)})
    if bad:
        raise ValueError(f"gold labels must be {SAFE!r} or {UNSAFE!r}, got {bad[:5]}")
    for s in scores:
        if s is not None and not 0.0 <= s <= 1.0:
            raise ValueError(f"{what}: a score must be in [0, 1] or None, got {s!r}")


def _scored(gold: Sequence[str], scores: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(y, score) of the scored items, y = 1 for gold 不安全."""
    kept = [(g == UNSAFE, s) for g, s in zip(gold, scores) if s is not None]
    return np.array([y for y, _ in kept], dtype=int), np.array([s for _, s in kept], dtype=float)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _default_rule(rule: Rule | None) -> Rule:
    if rule is None:
        from synth.scoring import label as rule
    return rule


def score_metrics(gold: Sequence[str], scores: Sequence[float | None]) -> dict[str, Any]:
    """{"n", "scored", "auroc", "auprc", "positive_share"} of one score against the gold labels."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    _check(gold, scores)
    y, s = _scored(gold, scores)
    both = len(set(y.tolist())) == 2
    return {
        "n": len(gold),
        "scored": len(y),
        "auroc": float(roc_auc_score(y, s)) if both else None,
        "auprc": float(average_precision_score(y, s, pos_label=1)) if both else None,
        "positive_share": float(y.mean()) if len(y) else None,
    }


def at_thresholds(gold: Sequence[str], per_judge_scores: Sequence[Sequence[float | None]], t_safe: float,
                  t_unsafe: float, margin: float | None = None, how: str = "mean",
                  rule: Rule | None = None) -> dict[str, Any]:
    """The rule's figures at (t_safe, t_unsafe), with each item's `labels` ("" when unlabelled)
    and `reasons` (the rule's controversy reason, or "unscored")."""
    _check_judges(gold, per_judge_scores)
    labels, reasons = _apply(per_judge_scores, t_safe, t_unsafe, margin, how, _default_rule(rule))
    return {**_figures(gold, labels), "labels": labels, "reasons": reasons}


def _check_judges(gold: Sequence[str], per_judge_scores: Sequence[Sequence[float | None]]) -> None:
    if not per_judge_scores:
        raise ValueError("per_judge_scores: no judges")
    for j, scores in enumerate(per_judge_scores):
        _check(gold, scores, f"judge {j}")


def _apply(per_judge_scores: Sequence[Sequence[float | None]], t_safe: float, t_unsafe: float,
           margin: float | None, how: str, rule: Rule) -> tuple[list[str], list[str]]:
    """Each item's (label or "", reason); the rule asked once per distinct score tuple."""
    labels: list[str] = []
    reasons: list[str] = []
    seen: dict[tuple[float, ...], tuple[str, str]] = {}
    for item in zip(*per_judge_scores):
        if any(s is None for s in item):
            decided, reason = "", UNSCORED
        else:
            if item not in seen:
                seen[item] = rule(list(item), t_safe, t_unsafe, margin=margin, how=how)
            decided, reason = seen[item]
        labels.append(decided if decided in (SAFE, UNSAFE) else "")
        reasons.append(reason)
    return labels, reasons


def _figures(gold: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    g, lab = np.asarray(gold, dtype=object), np.asarray(labels, dtype=object)
    labelled = int(np.count_nonzero(lab != ""))
    right = {c: int(np.count_nonzero((lab == c) & (g == c))) for c in (SAFE, UNSAFE)}
    precision = {c: _ratio(right[c], int(np.count_nonzero(lab == c))) for c in (SAFE, UNSAFE)}
    recall = {c: _ratio(right[c], int(np.count_nonzero(g == c))) for c in (SAFE, UNSAFE)}
    return {
        "share": _ratio(labelled, len(gold)),
        "n_labelled": labelled,
        "accuracy": _ratio(right[SAFE] + right[UNSAFE], labelled),
        "precision_unsafe": precision[UNSAFE],
        "recall_unsafe": recall[UNSAFE],
        "f1_unsafe": _f1(precision[UNSAFE], recall[UNSAFE]),
        "f1_safe": _f1(precision[SAFE], recall[SAFE]),
    }


def _at(gold: Sequence[str], per_judge_scores: Sequence[Sequence[float | None]], t_safe: float, t_unsafe: float,
        margin: float | None, how: str, rule: Rule) -> dict[str, Any]:
    """`at_thresholds`' figures without the per-item lists, on checked inputs."""
    return _figures(gold, _apply(per_judge_scores, t_safe, t_unsafe, margin, how, rule)[0])


def threshold_curve(gold: Sequence[str], per_judge_scores: Sequence[Sequence[float | None]], how: str = "mean",
                    margin: float | None = None, points: Sequence[float] | None = None,
                    rule: Rule | None = None) -> list[dict[str, Any]]:
    """`at_thresholds`' figures (no per-item lists) at t_safe = t_unsafe = t for each t of `points`."""
    _check_judges(gold, per_judge_scores)
    rule = _default_rule(rule)
    return [{"t_safe": t, "t_unsafe": t, **_at(gold, per_judge_scores, t, t, margin, how, rule)}
            for t in (CURVE_POINTS if points is None else points)]


_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_TARGET_FORMS = [
    (re.compile(rf"(precision_unsafe|accuracy)\s*=\s*{_NUMBER}"), None),
    (re.compile(rf"max_accuracy\s*[,@]\s*share\s*>=\s*{_NUMBER}"), "max_accuracy"),
]


def parse_target(target: str) -> tuple[str, float]:
    """("precision_unsafe" | "accuracy" | "max_accuracy", value in [0, 1]) of a target string;
    a ValueError on anything else."""
    text = target.strip() if isinstance(target, str) else ""
    for pattern, kind in _TARGET_FORMS:
        found = pattern.fullmatch(text)
        if found:
            value = float(found.groups()[-1])
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"target {target!r}: {value:g} is not in [0, 1]")
            return kind or found.group(1), value
    raise ValueError(f"unknown calibration target {target!r}: expected {TARGETS}")


def _objective(kind: str, value: float) -> tuple[Callable[[dict], bool], Callable[[dict], tuple]]:
    """(meets the constraint, sort key) of a target. The key ranks first how close a figure set
    comes to the constraint (so an unmet target still yields its best effort), then the objective."""

    def capped(figure: float) -> float:  # past the target, how far past does not matter
        return min(figure + _EPS, value)

    def correct(f: dict) -> float:  # the share of all pairs labelled right
        return f["accuracy"] * f["share"]

    measure = "share" if kind == "max_accuracy" else kind
    # precision_unsafe: the most pairs labelled right (maximising the share alone would label
    # nearly everything 安全 at a high t_unsafe); accuracy: the largest share that keeps it
    then = {"precision_unsafe": (correct, lambda f: f["share"]), "accuracy": (lambda f: f["share"],),
            "max_accuracy": (lambda f: f["accuracy"], lambda f: f["share"])}[kind]
    return (lambda f: f[measure] >= value - _EPS,
            lambda f: (capped(f[measure]), *(k(f) for k in then)))


def calibrate(gold: Sequence[str], per_judge_scores: Sequence[Sequence[float | None]], target: str,
              how: str = "mean", margin: float | None = None, rule: Rule | None = None,
              grid: Sequence[float] | None = None) -> dict[str, Any]:
    """The grid pair t_safe <= t_unsafe that best meets `target` (see `parse_target`), with its
    figures and `met` (False: no pair meets it, this is the closest one)."""
    kind, value = parse_target(target)
    meets, key = _objective(kind, value)
    _check_judges(gold, per_judge_scores)
    rule = _default_rule(rule)
    grid = sorted(CALIBRATION_GRID if grid is None else grid)
    best: tuple[tuple, float, float, dict[str, Any]] | None = None
    for i, t_safe in enumerate(grid):
        for t_unsafe in grid[i:]:
            figures = _at(gold, per_judge_scores, t_safe, t_unsafe, margin, how, rule)
            rank = key(figures)
            if best is None or rank > best[0]:  # ties: the first pair of the grid
                best = (rank, t_safe, t_unsafe, figures)
    if best is None:
        raise ValueError("calibrate: an empty threshold grid")
    _, t_safe, t_unsafe, figures = best
    return {"target": target, "t_safe": t_safe, "t_unsafe": t_unsafe, "margin": margin, "how": how,
            "met": meets(figures), **figures}


def reliability(gold: Sequence[str], scores: Sequence[float | None], bins: int = 10) -> dict[str, list[float]]:
    """{"prob_true", "prob_pred"}: per non-empty uniform score bin, the share of gold 不安全 and
    the mean score (unscored items left out)."""
    from sklearn.calibration import calibration_curve

    _check(gold, scores)
    y, s = _scored(gold, scores)
    if not len(y):
        return {"prob_true": [], "prob_pred": []}
    prob_true, prob_pred = calibration_curve(y, s, n_bins=bins, strategy="uniform", pos_label=1)
    return {"prob_true": [float(v) for v in prob_true], "prob_pred": [float(v) for v in prob_pred]}


def _ascii(name: str, fallback: str) -> str:
    """Plot text in ASCII (no CJK font is assumed)."""
    return name if name.isascii() else fallback


def plot(result: dict[str, Any], directory: Path) -> list[Path]:
    """reliability.png and threshold_curve.png of an evaluation `result`
    ({"judges": {name: {"reliability": ..}}, "combined": {"reliability": .., "curve": [..]}}),
    written to `directory`; their paths."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg when saving

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    combined = result.get("combined", {})

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    lines = [(_ascii(str(name), f"judge {i + 1}"), judge.get("reliability", {}))
             for i, (name, judge) in enumerate(result.get("judges", {}).items())]
    lines.append(("combined", combined.get("reliability", {})))
    for name, bins in lines:
        if bins.get("prob_pred"):
            ax.plot(bins["prob_pred"], bins["prob_true"], marker="o", label=name,
                    linewidth=2.5 if name == "combined" else 1.5)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean unsafe_score in bin", ylabel="share of gold unsafe in bin",
           title="Reliability of the judges' unsafe_score")
    ax.legend(loc="upper left", fontsize="small")
    reliability_png = directory / "reliability.png"
    fig.savefig(reliability_png, dpi=110, bbox_inches="tight")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    points = combined.get("curve", [])
    ts = [p["t_unsafe"] for p in points]
    ax.plot(ts, [p["accuracy"] for p in points], marker="o", label="accuracy of labelled")
    ax.plot(ts, [p["share"] for p in points], marker="s", label="labelled share")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold t (t_safe = t_unsafe)", ylabel="fraction",
           title="Combined score: accuracy and labelled share vs threshold")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    curve_png = directory / "threshold_curve.png"
    fig.savefig(curve_png, dpi=110, bbox_inches="tight")
    return [reliability_png, curve_png]
