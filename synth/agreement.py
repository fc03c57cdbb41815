"""How far labels agree: the judges with people, people with each other, and the audit sample.

Pure functions of label lists and frames (the report reads the frames from `<build>/reviews/`,
synth/human_labels.py):

- `label_figures(people, judged)`: one labeller (a judge) against people's labels, on the rows
  people settled (安全 / 不安全): `accuracy`, `f1` per label (scikit-learn's `f1_score`, that label
  the positive class, 0 where nobody gave it; a judge with no verdict is wrong) and Cohen's kappa (scikit-learn's
  `cohen_kappa_score`; None where it is undefined: both gave one and the same label throughout).
- `krippendorff_alpha(units)`: Krippendorff's alpha for nominal values, people with people, over the
  rows two annotators or more labelled (安全 / 不安全 / 有争议 are three values). Written here, 20
  lines from the definition (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability",
  the coincidence matrix), rather than the PyPI package `krippendorff`: that one is GPL-3.0, synth
  is Apache-2.0, and a guard team should not have to ask a lawyer before `pip install synth`.
  None where it is undefined (every value the same: no disagreement to expect).
- `wilson_interval(k, n)`: the Wilson score interval of a proportion (95% by default), for the
  audit sample's accuracy of the agreed labels; it stays inside [0, 1] and is usable at small n.
- `review_figures(annotations, rows)`: all of them for the report (see its docstring).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd

from synth.human_labels import people_labels, votes
from synth.output_parsing import LABELS

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
SAMPLE_PREFIX = "sample:"  # the `selection` of the audit sample's rows (synth review push --select sample:N)


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def label_figures(people: Sequence[str], judged: Sequence[str]) -> dict[str, Any]:
    """{"n", "accuracy", "f1": {label: F1}, "kappa"} of `judged` against `people` (same order)."""
    from sklearn.metrics import cohen_kappa_score, f1_score

    if len(people) != len(judged):
        raise ValueError(f"{len(people)} people's labels for {len(judged)} judged ones")
    n = len(people)
    if not n:
        return {"n": 0, "accuracy": None, "f1": {label: None for label in LABELS}, "kappa": None}
    people, judged = list(people), [j or "" for j in judged]
    f1 = f1_score(people, judged, labels=list(LABELS), average=None, zero_division=0)
    with warnings.catch_warnings():  # one label throughout: kappa is 0/0 (nan, and a warning), reported as None
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(people, judged)
    return {"n": n, "accuracy": _number(sum(p == j for p, j in zip(people, judged)) / n),
            "f1": {label: _number(v) for label, v in zip(LABELS, f1)}, "kappa": _number(kappa)}


def krippendorff_alpha(units: Sequence[Sequence[str]]) -> float | None:
    """Krippendorff's alpha (nominal) of the values each unit (row) got; units with fewer than two
    values cannot be paired and count for nothing. alpha = 1 - (n - 1) * sum_{c != k} o_ck /
    sum_{c != k} n_c * n_k, with o the coincidence matrix and n_c its margins."""
    coincidences: Counter[tuple[str, str]] = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    coincidences[(c, k)] += 1 / (m - 1)
    margins: Counter[str] = Counter()
    for (c, _), o in coincidences.items():
        margins[c] += o
    n = sum(margins.values())
    observed = sum(o for (c, k), o in coincidences.items() if c != k)
    expected = sum(margins[c] * margins[k] for c in margins for k in margins if c != k)
    if not expected:
        return None
    return 1 - (n - 1) * observed / expected


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float | None, float | None]:
    """The Wilson score interval of k successes in n trials ((None, None) for n = 0)."""
    if not n:
        return None, None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _verdicts(judgements: Any) -> dict[str, str]:
    """Judge name -> verdict ("" when it gave none) of a row's `judgements`."""
    if judgements is None or (isinstance(judgements, float) and math.isnan(judgements)):
        return {}
    return {j["judge"]: j.get("verdict") or "" for j in judgements}


def review_figures(annotations: pd.DataFrame, rows: pd.DataFrame) -> dict[str, Any] | None:
    """The report's `reviews` (None when nobody labelled anything):

    - `counts`: annotations that count (synth.human_labels.votes), annotators, rows people labelled,
      people's labels per label, and how many rows `settled` (安全 / 不安全);
    - `judges_vs_people`: on the settled rows, per judge `label_figures` of its verdicts, and the
      same per scenario; `agreed_labels`: the judges' agreed labels (not the tier) on those rows;
    - `people_vs_people`: the rows two annotators or more labelled, their annotations, the share of
      annotator pairs that agree, and Krippendorff's alpha;
    - `audit`: the audit sample's rows people labelled (selection sample:N), how many of the judges'
      agreed labels they confirmed (people's 有争议 confirms none), accuracy and its Wilson 95% interval.
    """
    people = people_labels(annotations)
    if people.empty:
        return None
    counted = votes(annotations)
    rows = rows.set_index("id", drop=False)
    people = people[people["row_id"].isin(rows.index)]
    settled = people[people["label"].isin(LABELS)]
    judges = sorted({name for js in rows["judgements"] for name in _verdicts(js)})

    def versus(part: pd.DataFrame) -> dict[str, Any]:
        verdicts = [_verdicts(rows.at[r, "judgements"]) for r in part["row_id"]]
        return {name: label_figures(list(part["label"]), [v.get(name, "") for v in verdicts]) for name in judges}

    scenario = settled["row_id"].map(rows["scenario"])
    by_scenario = {}
    for name, part in settled.groupby(scenario, sort=True):
        by_scenario[str(name)] = {"name": str(rows.loc[part["row_id"].iloc[0], "scenario_name"]), "n": int(len(part)),
                                  "judges": versus(part)}
    agreed = settled[settled["row_id"].map(rows["label"]).isin(LABELS)]

    units = [list(group["label"]) for _, group in counted.groupby("row_id", sort=True) if len(group) >= 2]
    pairs = sum(len(u) * (len(u) - 1) for u in units)
    agreeing = sum(n * (n - 1) for u in units for n in Counter(u).values())
    alpha = krippendorff_alpha(units)

    audit = people[people["selection"].str.startswith(SAMPLE_PREFIX)]
    confirmed = int((audit["label"].values == audit["row_id"].map(rows["label"]).values).sum())
    low, high = wilson_interval(confirmed, len(audit))
    return {
        "counts": {"annotations": int(len(counted)), "annotators": int(counted["annotator"].nunique()),
                   "rows": int(len(people)), "settled": int(len(settled)),
                   "labels": {str(k): int(v) for k, v in people["label"].value_counts().sort_index().items()}},
        "judges_vs_people": {"n": int(len(settled)), "judges": versus(settled), "by_scenario": by_scenario,
                             "agreed_labels": label_figures(list(agreed["label"]),
                                                            list(agreed["row_id"].map(rows["label"])))},
        "people_vs_people": {"rows": len(units), "annotations": sum(map(len, units)),
                             "pair_agreement": _number(agreeing / pairs) if pairs else None,
                             "krippendorff_alpha": None if alpha is None else _number(alpha)},
        "audit": {"rows": int(len(audit)), "confirmed": confirmed,
                  "accuracy": _number(confirmed / len(audit)) if len(audit) else None,
                  "wilson_95": [_number(low) if low is not None else None, _number(high) if high is not None else None]},
    }
