"""`synth templates try SCENARIO [SUBCATEGORY] --config C`: does a template write what it says?

A team that adds or edits a scenario template learns otherwise, from a build, after a GPU-week.
This runs the project's own stages on a handful of element combinations of one scenario (or one
subcategory of it), harmful and benign: elements → queries → filter_questions → dedup_questions
→ judge_questions, and with `answers` also respond (the config's first responder) and annotate
(its pair judges). They go through the runner (synth.runner.run_stages) as a sub-list of the
shipped pipeline, so what is measured is what a build would do with the same config, models and
seed (the elements are the ones a build draws: the first calls of each subcategory and kind).
Augment and obfuscate are left out: they rewrite questions, and the question is whether the
template's own questions are what it asks for.

The stages write into a temporary directory, deleted afterwards, with no request cache: nothing
is written into any build. The result is the scorecard (synth/report/scorecard.py) and a sample
of the judged questions (question, kind and subcategory asked, the judge's verdict and reason).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from synth.config import PipelineConfig
from synth.errors import BadInput
from synth.templates import Catalog

QUESTION_STAGES = ("elements", "queries", "filter_questions", "dedup_questions", "judge_questions")
ANSWER_STAGES = ("respond", "annotate")
SAMPLE_ROWS = 8  # judged questions shown, half harmful and half benign where there are
SAMPLE_REASON_CHARS = 80


@dataclasses.dataclass
class TryResult:
    scenario: str
    subcategories: list[str]  # those tried
    combinations: int  # element combinations drawn (generator calls), harmful and benign
    config: PipelineConfig  # the derived config the stages ran with
    scorecard: list[dict[str, Any]]
    sample: list[dict[str, Any]]
    dry_run: bool = False


def try_inputs(config_path: Path, scenario: str, subcategory: str | None, n: int, answers: bool
               ) -> tuple[PipelineConfig, Catalog]:
    """The config and catalog of a try: C's, narrowed to `scenario` (and `subcategory`) with
    generation calls chosen so that about `n` combinations are drawn, half of each kind. Bad
    input (an unknown scenario or subcategory, no question judge, n < 1) raises BadInput before
    anything runs."""
    from synth.prepare import prepare
    from synth.templates import load_catalog

    if n < 1:
        raise BadInput(f"--n must be at least 1, got {n}")
    config, catalog = prepare(config_path)
    known = sorted({s for s, _ in catalog.scenario_of.values()})  # every scenario, also those C leaves out
    if scenario not in known:
        raise BadInput(f"unknown scenario {scenario!r} (known: {', '.join(known)})")
    if scenario not in catalog.scenarios:  # C builds other scenarios: load this one
        catalog = load_catalog(config.templates_dir, config.seeds_dir, only=[scenario])
    template = catalog.scenarios[scenario].template
    subs = [s.id for s in template.subcategories]
    if subcategory is not None and subcategory not in subs:
        elsewhere = catalog.scenario_of.get(subcategory)
        raise BadInput(f"unknown subcategory {subcategory!r} of scenario {scenario!r}"
                       + (f" (it is one of {elsewhere[0]!r})" if elsewhere else "") + f" (known: {', '.join(subs)})")
    if not config.roles.question_judges:
        raise BadInput(f"{config_path}: roles.question_judges is empty: templates try measures templates with the "
                       "question judge (stage judge_questions); add one")
    tried = [subcategory] if subcategory is not None else subs
    scenarios = {scenario: dataclasses.replace(catalog.scenarios[scenario], template=template.model_copy(
        update={"subcategories": [s for s in template.subcategories if s.id in tried]}))}
    calls = max(1, round(n / (2 * len(tried))))  # per subcategory and kind
    roles = config.roles.model_copy(update={"responders": config.roles.responders[:1]}) if answers else config.roles
    config = config.model_copy(update={
        "scenarios": [scenario], "roles": roles,
        "generation": config.generation.model_copy(update={"harmful_calls_per_subcategory": calls,
                                                           "benign_calls_per_subcategory": calls}),
        "respond": config.respond.model_copy(update={"responders_per_question": 1}),
    })
    return config, dataclasses.replace(catalog, scenarios=scenarios)


def run_try(config: PipelineConfig, catalog: Catalog, *, answers: bool = False, dry_run: bool = False) -> TryResult:
    """Run the question stages (and with `answers` the answer stages) with a try's config and
    catalog (`try_inputs`) in a temporary directory; return the scorecard and a sample of the
    judged questions."""
    from synth.lock import BuildLock
    from synth.manifest import build_manifest
    from synth.pipeline import PIPELINE, Pipeline
    from synth.report.scorecard import scorecard
    from synth.runner import run_stages
    from synth.session import init_ray
    from synth.stages.base import StageContext

    [scenario] = config.scenarios
    pipeline = Pipeline([PIPELINE[name] for name in (*QUESTION_STAGES, *(ANSWER_STAGES if answers else ()))])
    with tempfile.TemporaryDirectory(prefix="synth-templates-try-") as tmp:
        out = Path(tmp)
        init_ray()
        ctx = StageContext(config=config, catalog=catalog, dry_run=dry_run, cache_root=None)
        try:
            with BuildLock(out) as lock:
                records = run_stages(ctx, out, None, lock, pipeline=pipeline)
        finally:
            ctx.close()
        manifest = build_manifest(config, catalog, ctx, records, {}, dry_run)
        card = scorecard(out, manifest, questions_per_call=config.generation.questions_per_call)
        sample = sample_questions(out)
    combinations = next(r.rows_out for r in records if r.name == QUESTION_STAGES[0])
    tried = [s.id for s in catalog.scenarios[scenario].template.subcategories]
    return TryResult(scenario, tried, combinations, config, card, sample, dry_run)


def sample_questions(out: Path, k: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """Up to `k` of the questions the question judge read, half of each requested kind (by id,
    a hash: no order of the generator's), with the verdict and what routing did."""
    from synth.report.readers import read_columns, requested
    from synth.report.scorecard import QUESTION_JUDGE

    stage = out / "stages" / QUESTION_JUDGE
    columns = ["id", "question", "kind", "subcategory", "requested_kind", "requested_subcategory", "question_harmful",
               "judged_subcategory", "question_route", "question_judgements", "reject_reason"]
    frames = [f for f in (read_columns(stage / "rows", columns), read_columns(stage / "rejects", columns)) if len(f)]
    if not frames:
        return []
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.assign(asked_kind=requested(rows, "kind"), asked_subcategory=requested(rows, "subcategory"))
    rows = rows.sort_values("id").groupby("asked_kind", sort=True).head(math.ceil(k / 2))
    out_rows = []
    for r in rows.sort_values(["asked_kind", "id"], ascending=[False, True]).head(k).to_dict("records"):
        rejected = r.get("reject_reason")
        judgements = r.get("question_judgements")
        reasons = [str(j.get("reason") or "") for j in (judgements if judgements is not None else [])]
        out_rows.append({
            "question": r["question"], "kind_asked": r["asked_kind"], "subcategory_asked": r["asked_subcategory"],
            "judged_harmful": None if pd.isna(r.get("question_harmful")) else bool(r["question_harmful"]),
            "judged_subcategory": None if pd.isna(r.get("judged_subcategory")) else r["judged_subcategory"],
            "outcome": f"rejected: {rejected}" if isinstance(rejected, str) and rejected
            else r.get("question_route") or "kept as asked",
            "reason": " | ".join(x for x in reasons if x)[:SAMPLE_REASON_CHARS],
        })
    return out_rows


def format_try(result: TryResult) -> str:
    """What `synth templates try` prints: what was tried, the scorecard, the sample."""
    from synth.report.render import SCORECARD_NOTE, markdown_table, scorecard_table

    gen = result.config.generation
    subs = (f"subcategory {result.subcategories[0]}" if len(result.subcategories) == 1
            else f"{len(result.subcategories)} subcategories")
    lines = [f"templates try: {result.scenario}, {subs}: {result.combinations} element combinations "
             f"({gen.harmful_calls_per_subcategory} harmful and {gen.benign_calls_per_subcategory} benign per "
             f"subcategory, {gen.questions_per_call} questions each)"
             + (" · dry run: the stand-in engine, not model output" if result.dry_run else ""), "",
             "## Scorecard", "", SCORECARD_NOTE, ""]
    header, rows = scorecard_table(result.scorecard)
    lines += [*markdown_table(header, rows), "", "## Sample of the judged questions", ""]
    if result.sample:
        yes_no = {True: "yes", False: "no", None: "–"}
        lines += markdown_table(
            ["kind asked", "subcategory asked", "judged harmful", "judged subcategory", "outcome", "question", "reason"],
            [[s["kind_asked"], s["subcategory_asked"], yes_no[s["judged_harmful"]], s["judged_subcategory"] or "–",
              s["outcome"], s["question"], s["reason"] or "–"] for s in result.sample])
    else:
        lines.append("none: no question reached the question judge (see the scorecard's losses)")
    return "\n".join(lines)
