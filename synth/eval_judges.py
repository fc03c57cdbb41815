"""Calibrate a config's judges against gold labels before a build spends a GPU-week.

    synth eval-judges GOLD.jsonl --config pipelines/demo.yaml [--json] [--dry-run]

GOLD: Libra-Test rows (`question, response, label, category_name, sub_category_name, id`;
`source` and `analyze` may be there too), or a build's reviews directory (`BUILD/reviews`, written
by `synth review pull`): the rows people settled, with their label, a dialogue row with its earlier
turns (`history`, judged as a conversation, as in a build). Each pair goes through the build's own annotate
stage (`synth.stages.labelling.Annotate`): the config's judge roles with their templates,
rubrics, models, sampling and structured outputs, on the real engines (or the stand-in
with `--dry-run`), and the build's rule: both judges agree → that label, else the pair
would be in the controversial tier (有争议); an agreed label that the config's label filters
(the pair filters that read the judges' output, e.g. `label_consistency`: a 安全 label whose
own analysis says 不安全) would send to the tier, hard/ or the rejects is not a label either.
Nothing is cached: a calibration always asks the models.

The result (one JSON object with `--json`):
- `judges`: per judge, `accuracy`, `f1_unsafe`, `f1_safe` (as `synth eval-guard` computes
  them; an unparsed verdict counts as wrong) and `unparsed` (the share with no verdict);
- `agreement`: the share of pairs where both judges gave the same verdict;
- `agreed`: the build's rule: `share` of pairs labelled, `accuracy` of those labels;
- `judges_agree`: the same before the label filters (both judges agree, nothing else);
- `per_scenario`: the same per gold `category_name` (with each judge's accuracy);
- `pairs`: every gold pair's id, gold label, each judge's verdict (and its analysis), the build
  rule's label, and `held` (the label filter's reason where one held an agreed label back).

It is also recorded under the model cache (`calibrations/<judges signature>.json`), keyed
by everything the annotate stage's output depends on except its input; a build whose
judges have that signature shows the calibration in its manifest and report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from synth import storage
from synth.engines.base import parse_history
from synth.errors import BadInput
from synth.eval_guard import Tally
from synth.gold import GOLD_FIELDS, read_judge_gold  # noqa: F401  (GOLD_FIELDS: callers read it here)
from synth.output_parsing import LABELS
from synth.scoring import FROM_LOGPROBS
from synth.rows import DIALOGUE_DTYPES, SINGLE_TURN

def gold_pairs(gold: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Gold rows shaped as the respond stage's pairs (the columns annotate carries)."""
    from synth.stages.labelling import PAIR_COLUMNS
    from synth.stages.question_judge import QUESTION_JUDGE_COLUMNS

    rows = []  # each a single question (a one-turn conversation), or a dialogue's last turn after its `history`
    for row_id, g in gold.items():
        pair = {c: None if c in QUESTION_JUDGE_COLUMNS else "" for c in PAIR_COLUMNS} | SINGLE_TURN
        pair.update(id=row_id, question_id=row_id, scenario=g["category_name"], scenario_name=g["category_name"],
                    subcategory=g["sub_category_name"], subcategory_name=g["sub_category_name"],
                    question=g["question"], response=g["response"], seed=0, response_tokens=0, elements=None)
        history = parse_history(g.get("history"))  # gold from a build's reviews: a dialogue row's earlier turns
        if history:
            pair.update(history=json.dumps(history, ensure_ascii=False),
                        turns=1 + sum(m["role"] == "user" for m in history))
        rows.append(pair)
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    return frame.astype({"seed": "int64", "response_tokens": "int64", **DIALOGUE_DTYPES})


def judges_signature(ctx) -> str:
    """What the judges' labels depend on: the annotate stage's inputs without its input rows."""
    from synth.signatures import digest, stage_inputs
    from synth.stages.labelling import Annotate

    inputs = stage_inputs(Annotate(), ctx, upstream_output="")
    inputs.pop("input")
    # the same judges whatever thresholds label with their scores
    inputs["config"] = digest(Annotate().judge_depends(ctx.config))
    return digest(inputs)


def _calibrations_dir() -> Path:
    from synth.models import models_cache_dir

    return models_cache_dir().parent / "calibrations"


def calibration_path(signature: str) -> Path:
    return _calibrations_dir() / f"{signature}.json"


def log_path() -> Path:
    """Where Ray's and vLLM's own notices of an eval-judges run go."""
    return _calibrations_dir() / "eval-judges.log"


def last_calibration(ctx) -> dict[str, Any] | None:
    """The last `eval-judges` result recorded for these judges, or None."""
    try:
        return json.loads(calibration_path(judges_signature(ctx)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def measured_figures(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What an `eval-judges` record says the labels are worth, one row per gold file measured
    (the first, then `also`): its name, n, the combined score's AUROC and AU-PRC, and the build
    rule's accuracy and labelled share. The report and the dataset card show these side by side."""
    rows = []
    for r in ([record, *record.get("also", [])] if record else []):
        combined = r.get("combined") or {}
        rows.append({"gold": Path(str(r.get("gold", ""))).name, "n": r["n"], "auroc": combined.get("auroc"),
                     "auprc": combined.get("auprc"), "accuracy": r["agreed"]["accuracy"],
                     "share": r["agreed"]["share"]})
    return rows


def held_back(row: dict[str, Any], label_filters: list[Any]) -> str:
    """The reason the build's label filters would not keep this agreed label ('' if they keep it)."""
    from synth.filters import reason_of

    for f in label_filters:
        verdict = f.check(row)
        if verdict is not None:
            return reason_of(f, verdict.reason)
    return ""


def field_agreement(gold: dict[str, dict[str, Any]], by_id: dict[str, Any], judges: list[str], fields: list[str],
                    subcategory_ids: dict[str, str]) -> dict[str, Any]:
    """Per judge field (config `annotate.fields`): the share of gold pairs where every judge gave
    a valid value and the share where they gave the same one (gold has no field labels). For
    `subcategory`, each judge's accuracy against gold's sub_category_name where that name is one
    of the catalog's subcategories (`subcategory_ids`: Chinese name -> id)."""
    out: dict[str, Any] = {}
    for name in fields:
        answered = same = 0
        hits, mapped = {j: 0 for j in judges}, 0
        for row_id, g in gold.items():
            values = {j["judge"]: j.get(name, "") for j in by_id[row_id]["judgements"]}
            given = [values.get(j, "") for j in judges]
            answered += all(given)
            same += all(given) and len(set(given)) == 1
            expected = subcategory_ids.get(g["sub_category_name"])
            if name == "subcategory" and expected:
                mapped += 1
                for j in judges:
                    hits[j] += values.get(j, "") == expected
        n = len(gold)
        out[name] = {"answered": answered / n if n else 0.0, "agreement": same / n if n else 0.0}
        if name == "subcategory":
            out[name]["gold_mapped"] = mapped
            out[name]["accuracy"] = {j: hits[j] / mapped if mapped else 0.0 for j in judges}
    return out


def _score_of(value: Any) -> float | None:
    """A judge's or the combined unsafe_score, None where there is none (a failed judge: NaN)."""
    return None if value is None or value != value else float(value)


def judge_scores(gold: dict[str, dict[str, Any]], by_id: dict[str, Any], judges: list[str]) -> list[list[float | None]]:
    """Per judge, its unsafe_score of every gold pair (in gold's order); None where it gave none."""
    def of(row_id: str, name: str) -> float | None:
        j = next((j for j in by_id[row_id]["judgements"] if j["judge"] == name), {})
        return _score_of(j.get("unsafe_score")) if j.get("verdict") in LABELS else None

    return [[of(row_id, name) for row_id in gold] for name in judges]


def weighted_rule(rule: dict[str, Any]):
    """synth.scoring.label with the rule's judge weights."""
    from functools import partial

    from synth.scoring import label

    return partial(label, weights=rule.get("weights"), judges_agree=rule.get("judges_agree", True))


def score_figures(gold: dict[str, dict[str, Any]], by_id: dict[str, Any], judges: list[str],
                  rule: dict[str, Any]) -> dict[str, Any]:
    """What the judges' scores are worth: per judge AUROC, AU-PRC, reliability and the share
    scored from log-probabilities; for the combined score the same, the rule's figures at its
    thresholds (no label filters) and the threshold curve (synth.judge_metrics)."""
    from synth.judge_metrics import at_thresholds, reliability, score_metrics, threshold_curve

    labels = [g["label"] for g in gold.values()]
    per_judge = judge_scores(gold, by_id, judges)
    out: dict[str, Any] = {"judges": {}}
    for name, scores in zip(judges, per_judge):
        sources = [next((j.get("score_source", "") for j in by_id[r]["judgements"] if j["judge"] == name), "")
                   for r in gold]
        out["judges"][name] = {**score_metrics(labels, scores), "reliability": reliability(labels, scores),
                               "from_logprobs": sum(s == FROM_LOGPROBS for s in sources) / len(sources)
                               if sources else 0.0}
    combined = [_score_of(by_id[r].get("unsafe_score")) if all(s[i] is not None for s in per_judge) else None
                for i, r in enumerate(gold)]
    how, margin, weighted = rule["combine"], rule["margin"], weighted_rule(rule)
    at = at_thresholds(labels, per_judge, rule["t_safe"], rule["t_unsafe"], margin, how, rule=weighted)
    out["combined"] = {**score_metrics(labels, combined), "reliability": reliability(labels, combined),
                       "at_thresholds": {k: v for k, v in at.items() if k not in ("labels", "reasons")},
                       "curve": threshold_curve(labels, per_judge, how, margin, rule=weighted)}
    return out


def score(gold: dict[str, dict[str, Any]], labelled: pd.DataFrame, judges: list[str],
          label_filters: list[Any] = (), fields: list[str] = (),
          subcategory_ids: dict[str, str] | None = None, rule: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics of the module docstring from annotate's output rows; `label_filters` are
    the config's pair filters that read the judges' output (`Filter.reads_labels`); `rule`:
    the labelling rule's thresholds (synth.calibration.effective_rule), for the score figures
    (left out without it)."""
    by_id = {row["id"]: row for row in labelled.to_dict("records")}
    # an agreed label is 安全/不安全 (a disagreement is the controversial tier's 有争议: no label)
    held = {row_id: held_back(row, label_filters) if row["label"] in LABELS else "" for row_id, row in by_id.items()}
    if set(by_id) != set(gold):
        raise RuntimeError(f"eval-judges: {len(gold)} gold pairs in, {len(by_id)} labelled pairs out")
    tallies = {name: Tally() for name in judges}
    scenarios: dict[str, dict[str, Any]] = {}
    agree = labelled_n = correct = agreed_n = agreed_correct = 0
    for row_id, g in gold.items():
        row, label = by_id[row_id], g["label"]
        verdicts = {j["judge"]: j["verdict"] for j in row["judgements"]}
        s = scenarios.setdefault(g["category_name"], {"n": 0, "labelled": 0, "correct": 0,
                                                      "judges": {n: Tally() for n in judges}})
        s["n"] += 1
        for name in judges:
            verdict = verdicts.get(name, "")
            for tally in (tallies[name], s["judges"][name]):
                tally.unparseable += verdict not in LABELS
                tally.add(label, verdict)
        same = len({verdicts.get(n, "") for n in judges}) == 1 and verdicts.get(judges[0], "") in LABELS
        agree += same
        if row["label"] in LABELS:  # both judges agree
            agreed_n += 1
            agreed_correct += row["label"] == label
        if row["label"] in LABELS and not held[row_id]:  # the build's rule gave a label (agreed, kept by the label filters)
            labelled_n += 1
            s["labelled"] += 1
            correct += row["label"] == label
            s["correct"] += row["label"] == label
    n = len(gold)

    def judge_metrics(tally: Tally) -> dict[str, Any]:
        m = tally.metrics()
        return {"accuracy": m["accuracy"], "f1_unsafe": m["f1_unsafe"], "f1_safe": m["f1_safe"],
                "unparsed": tally.unparseable / tally.n if tally.n else 0.0, "n": tally.n}

    def judged(row_id: str, name: str) -> dict[str, Any]:
        return next((j for j in by_id[row_id]["judgements"] if j["judge"] == name), {})

    pairs = [{"id": row_id, "category_name": g["category_name"], "gold": g["label"],
              "label": "" if held[row_id] or by_id[row_id]["label"] not in LABELS else by_id[row_id]["label"],
              "held": held[row_id], "unsafe_score": _score_of(by_id[row_id].get("unsafe_score")),
              **{name: judged(row_id, name).get("verdict", "") for name in judges},
              "scores": {name: _score_of(judged(row_id, name).get("unsafe_score")) for name in judges},
              "analyses": {name: judged(row_id, name).get("analysis", "") for name in judges}}
             for row_id, g in gold.items()]
    figures = score_figures(gold, by_id, judges, rule) if rule is not None else {"judges": {}}
    return {
        "n": n,
        "judges": {name: {**judge_metrics(t), **figures["judges"].get(name, {})} for name, t in tallies.items()},
        **({"combined": figures["combined"], "rule": rule} if rule is not None else {}),
        "agreement": agree / n,
        "agreed": {"share": labelled_n / n, "accuracy": correct / labelled_n if labelled_n else 0.0,
                   "n": labelled_n},
        "judges_agree": {"share": agreed_n / n, "accuracy": agreed_correct / agreed_n if agreed_n else 0.0,
                         "n": agreed_n},
        "per_scenario": {
            name: {"n": s["n"], "share": s["labelled"] / s["n"],
                   "accuracy": s["correct"] / s["labelled"] if s["labelled"] else 0.0,
                   "judges": {j: t.metrics()["accuracy"] for j, t in s["judges"].items()}}
            for name, s in sorted(scenarios.items())
        },
        # every pair's verdicts, to see which gold pairs the judges get wrong
        "pairs": pairs,
        **({"fields": field_agreement(gold, by_id, judges, list(fields), subcategory_ids or {})} if fields else {}),
    }


def evaluate_judges(gold_paths: Path | list[Path], config_path: Path, *, dry_run: bool = False,
                    templates: Path | None = None, seeds: Path | None = None, target: str | None = None,
                    save: Path | None = None, plot_dir: Path | None = None) -> dict[str, Any]:
    """Run the config's judges over the gold pairs of one or several files (one run of the
    models for all); the result is also recorded (see above).

    The result is the first file's (the keys of the module docstring, plus `combined` and
    `rule`: what the scores are worth); the others' are in `also`, in order. `target`
    (`--calibrate`): thresholds chosen on the first file's pairs (synth.judge_metrics.calibrate)
    under `calibration`, and every file's figures at them under `at_calibration`: the others
    are the held-out measure of the thresholds. `save`: the calibration record a config's
    `annotate.rule.calibration` reads. `plot_dir`: reliability and threshold-curve plots."""
    import ray

    from synth.prepare import prepare
    from synth.session import init_ray
    from synth.calibration import effective_rule, write_calibration
    from synth.judge_metrics import at_thresholds, calibrate, parse_target, plot
    from synth.models import check_role_models
    from synth.stages.base import StageContext
    from synth.stages.labelling import Annotate

    paths = [Path(gold_paths)] if isinstance(gold_paths, (str, Path)) else [Path(p) for p in gold_paths]
    if target is not None:
        try:
            parse_target(target)
        except ValueError as e:
            raise BadInput(f"--target: {e}") from None
    if save is not None and target is None:
        raise BadInput("--save: a calibration record needs --calibrate (and --target)")
    golds = [read_judge_gold(p) for p in paths]
    config, catalog = prepare(config_path, templates, seeds)
    from synth import judge_examples, probe

    for path, gold in zip(paths, golds):  # no judge is measured on its own training pairs or examples
        probe.check_no_overlap(gold, path, config)
        judge_examples.check_no_overlap(gold, path, config)
    judges = [role.name for role in config.roles.judges]
    if not dry_run:  # a judge whose model cannot be found fails here, naming it, before Ray starts
        check_role_models(config, config.roles.judges, "judge")
    rule = effective_rule(config)
    init_ray()
    ctx = StageContext(config=config, catalog=catalog, dry_run=dry_run, cache_root=None).for_stage("eval_judges")
    started = time.monotonic()
    # several files: one run of the judges, ids kept apart by the file's index
    keyed = [{f"{i}\x1f{row_id}": g for row_id, g in gold.items()} for i, gold in enumerate(golds)]
    everything = {k: g for part in keyed for k, g in part.items()}
    try:
        from synth.progress import StageProgress

        with StageProgress(ctx.stage, ctx.tally):
            labelled = Annotate().run(ctx, ray.data.from_pandas(gold_pairs(everything))).to_pandas()
    finally:
        ctx.close()
    seconds = round(time.monotonic() - started, 1)
    from synth.filters import build_filters
    from synth.output_parsing import ordered_fields

    label_filters = [f for f in build_filters(config.filters.pairs, "filters.pairs") if f.reads_labels]
    signature = judges_signature(ctx)
    results = []
    for i, (path, gold) in enumerate(zip(paths, golds)):
        prefix = f"{i}\x1f"
        part = labelled[labelled["id"].str.startswith(prefix)].copy()
        part["id"] = part["id"].str[len(prefix):]
        result = score(gold, part, judges, label_filters, ordered_fields(config.annotate.fields),
                       {zh: sub_id for sub_id, zh in catalog.subcategories.items()}, rule)
        result.update(gold=str(path), config=str(config_path), dry_run=dry_run, seconds=seconds,
                      judges_signature=signature, at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      roles={role.name: {"model": config.models[role.model].model,
                                         "rubric": catalog.rubric(role.rubric).id} for role in config.roles.judges})
        results.append(result)
    if target is not None:
        first = results[0]
        labels = [g["label"] for g in golds[0].values()]
        chosen = calibrate(labels, _per_judge(first, judges), target, how=rule["combine"], margin=rule["margin"],
                           rule=weighted_rule(rule))
        for result, gold in zip(results, golds):
            figures = at_thresholds([g["label"] for g in gold.values()], _per_judge(result, judges),
                                    chosen["t_safe"], chosen["t_unsafe"], chosen["margin"], chosen["how"],
                                    rule=weighted_rule(rule))
            result["at_calibration"] = {k: v for k, v in figures.items() if k not in ("labels", "reasons")}
        first["calibration"] = {"target": target, "met": chosen["met"], "on": str(paths[0]),
                                "thresholds": {"t_safe": chosen["t_safe"], "t_unsafe": chosen["t_unsafe"],
                                               "margin": chosen["margin"], "combine": chosen["how"]}}
        if save is not None:
            write_calibration(save, {
                **first["calibration"], "gold": [str(p) for p in paths], "judges_signature": signature,
                "figures": {r["gold"]: r["at_calibration"] for r in results}, "at": first["at"], "dry_run": dry_run})
            first["calibration"]["saved"] = str(save)
    result = {**results[0], **({"also": results[1:]} if len(results) > 1 else {})}
    storage.write_json(calibration_path(signature), result)
    if plot_dir is not None:
        for i, r in enumerate(results):
            r["plots"] = [str(p) for p in plot(r, Path(plot_dir) / (f"{i}-{Path(r['gold']).stem}" if len(results) > 1
                                                                    else ""))]
        result["plots"] = results[0]["plots"]
    return result


def _per_judge(result: dict[str, Any], judges: list[str]) -> list[list[float | None]]:
    """Per judge, its score of every pair of a result (in gold's order)."""
    return [[p["scores"][name] for p in result["pairs"]] for name in judges]


def _f(value: Any) -> str:
    return "   -" if value is None else f"{value:.3f}"


def format_result(result: dict[str, Any]) -> str:
    """The human-readable form of a result: each gold file's figures, then (several files) the
    headline figures side by side."""
    parts = [format_one(r) for r in (result, *result.get("also", []))]
    if result.get("also"):
        parts.append(format_side_by_side([result, *result["also"]]))
    return "\n\n".join(parts)


def format_side_by_side(results: list[dict[str, Any]]) -> str:
    names = [Path(r["gold"]).name for r in results]
    width = max(14, *(len(n) for n in names))
    lines = ["side by side".ljust(34) + "".join(f"{n:>{width + 2}}" for n in names),
             "pairs".ljust(34) + "".join(f"{r['n']:>{width + 2}}" for r in results)]

    def row(label: str, get) -> None:
        values = []
        for r in results:
            try:
                values.append(_f(get(r)))
            except (KeyError, TypeError):
                values.append("   -")
        lines.append(label.ljust(34) + "".join(f"{v:>{width + 2}}" for v in values))

    for name in results[0]["judges"]:
        row(f"{name} accuracy", lambda r, n=name: r["judges"][n]["accuracy"])
        row(f"{name} AUROC", lambda r, n=name: r["judges"][n].get("auroc"))
    row("combined AUROC", lambda r: r["combined"]["auroc"])
    row("combined AU-PRC", lambda r: r["combined"]["auprc"])
    row("build rule: labelled share", lambda r: r["agreed"]["share"])
    row("build rule: accuracy", lambda r: r["agreed"]["accuracy"])
    if "at_calibration" in results[0]:
        row("calibrated: labelled share", lambda r: r["at_calibration"]["share"])
        row("calibrated: accuracy", lambda r: r["at_calibration"]["accuracy"])
    return "\n".join(lines)


def format_one(result: dict[str, Any]) -> str:
    """One gold file's figures."""
    lines = [f"{result.get('gold', 'gold')}: {result['n']} gold pairs, {result['seconds']} s"
             + (" (dry run: stand-in engine)" if result.get("dry_run") else "")]
    lines.append(f"{'judge':<24} {'accuracy':>8} {'F1 不安全':>8} {'F1 安全':>8} {'unparsed':>8} {'AUROC':>7} "
                 f"{'AU-PRC':>7} {'scored':>7}")
    for name, m in result["judges"].items():
        lines.append(f"{name:<24} {m['accuracy']:>8.3f} {m['f1_unsafe']:>9.3f} {m['f1_safe']:>9.3f} "
                     f"{m['unparsed']:>8.3f} {_f(m.get('auroc')):>7} {_f(m.get('auprc')):>7} "
                     f"{_f(m.get('from_logprobs')):>7}")
    lines.append("  (scored: the share of verdicts whose unsafe_score came from log-probabilities; "
                 "the rest score as their label, 0 or 1)")
    combined = result.get("combined")
    if combined:
        rule = result["rule"]
        lines.append(f"combined score ({rule['combine']}): AUROC {_f(combined['auroc'])}, AU-PRC "
                     f"{_f(combined['auprc'])} (gold 不安全 share {_f(combined['positive_share'])})")
        source = f"calibration {rule['calibration']['path']}" if rule.get("calibration") else "the config"
        lines.append(f"labelling rule: t_safe {rule['t_safe']:g}, t_unsafe {rule['t_unsafe']:g}, margin "
                     f"{rule['margin'] if rule['margin'] is not None else 'none'} (from {source})")
    agreed = result["agreed"]
    lines.append(f"agreement between judges: {result['agreement']:.3f}")
    raw = result["judges_agree"]
    lines.append(f"judges agree: share {raw['share']:.3f}, accuracy {raw['accuracy']:.3f}")
    lines.append(f"build rule (thresholds, then the label filters → label, else 有争议 or hard/): labelled share "
                 f"{agreed['share']:.3f}, accuracy of those labels {agreed['accuracy']:.3f}")
    if combined:
        lines.append(f"threshold curve (t_safe = t_unsafe = t): {'t':>5} {'share':>6} {'accuracy':>8} "
                     f"{'P 不安全':>8} {'R 不安全':>8}")
        for point in combined["curve"][1::2]:
            lines.append(f"{'':>40}{point['t_unsafe']:>5.2f} {point['share']:>6.3f} {point['accuracy']:>8.3f} "
                         f"{point['precision_unsafe']:>9.3f} {point['recall_unsafe']:>9.3f}")
    calibration = result.get("calibration")
    if calibration:
        t = calibration["thresholds"]
        lines.append(f"calibrated for {calibration['target']} on {calibration['on']}: t_safe {t['t_safe']:g}, "
                     f"t_unsafe {t['t_unsafe']:g}" + ("" if calibration["met"] else " (target NOT met: closest)")
                     + (f"; saved to {calibration['saved']}" if calibration.get("saved") else ""))
    at = result.get("at_calibration")
    if at:
        lines.append(f"at the calibrated thresholds: labelled share {at['share']:.3f}, accuracy {at['accuracy']:.3f}, "
                     f"precision 不安全 {at['precision_unsafe']:.3f}, recall 不安全 {at['recall_unsafe']:.3f}")
    lines.append(f"{'scenario':<10} {'n':>4} {'share':>6} {'accuracy':>8}  per judge")
    for name, s in result["per_scenario"].items():
        judges = ", ".join(f"{j} {a:.2f}" for j, a in s["judges"].items())
        lines.append(f"{name:<10} {s['n']:>4} {s['share']:>6.2f} {s['accuracy']:>8.2f}  {judges}")
    for name, f in result.get("fields", {}).items():
        line = f"judge field {name}: answered {f['answered']:.3f}, judges agree {f['agreement']:.3f}"
        if "accuracy" in f:
            line += (f"; accuracy against gold ({f['gold_mapped']} pairs): "
                     + ", ".join(f"{j} {a:.2f}" for j, a in f["accuracy"].items()))
        lines.append(line)
    if result.get("plots"):
        lines.append("plots: " + ", ".join(result["plots"]))
    return "\n".join(lines)
