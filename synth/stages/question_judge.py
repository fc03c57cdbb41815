"""judge_questions: is each question what its generator was asked for?

`kind` and `subcategory` say what the generator was *asked* to write. One or two question
judges (`roles.question_judges`, templates/shared/question_judge.yaml) read each question
before any responder is paid to answer it and say whether it asks for something harmful
(是/否, scored P(是) from the log-probabilities as the pair judges' verdicts are:
synth.scoring), which subcategory of the catalog it is about (written as its label 场景-子类,
stored as its id; `other` for none), and why.
Two judges combine with the pair judges' rule (synth.scoring.label with t_safe = t_unsafe =
`judge_questions.threshold`: on opposite sides they disagree and the question stays undecided,
null; otherwise the mean P(是) above the threshold is harmful).

The verdicts are columns (QUESTION_JUDGE_COLUMNS): `question_harmful` and
`judged_subcategory`, the names the pair judges' fields use; `question_score`, the combined
P(harmful); `question_judgements`, each judge's verdict, score and reason; `requested_kind`
and `requested_subcategory`, what the generator was asked for (provenance, always set); and
`question_route`, what routing did to a kept row. Routing (config `judge_questions`):

- kind mismatch (a harmful-kind question judged not harmful, a benign one judged harmful):
  `relabel` (kind becomes the judged one), `reject` (reason question_kind_mismatch) or `keep`;
- off topic (judged about another subcategory, or `other`): `reassign` (scenario and
  subcategory become the judged ones; a question about none of them, `other`, has nowhere to
  go and is rejected as question_off_topic), `reject` or `keep`.

A question judge may instead be a probe (`probe:` on a `task: embed` model, synth.probe's
QuestionProbe): one forward pass over the question in the template's `probe` form, P(harmful) and the subcategory
from the pooled state; no reason. It combines with other question judges by the same rule.
With `judge_questions.request_prior` (the share of the writer's questions that are on the
subcategory asked for), the probe takes the request as evidence too: its subcategory is the most
likely one given the state and the request (Bayes' rule, QuestionProbe.topics), so a close second
that was asked for is kept and a class the head all but rules out is not.

Undecided questions (the judges disagree, or a judge failed for good) are kept as asked; a
request that failed transiently leaves the question pending, sent again next run. With no
question judge configured the stage passes its rows through with the verdict columns null.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pyarrow as pa
import ray.data

from synth.config import PipelineConfig, Role
from synth.engines import REQUEST_COLUMNS, RESULT_COLUMNS, request_row
from synth.engines.base import PENDING, failure_reason, question_verdict_schema
from synth.output_parsing import FIELD_COLUMNS, OTHER_SUBCATEGORY, SAFE, UNSAFE, YES_NO, parse_question_verdict
from synth.rows import REJECT_COLUMN, records, stable_id
from synth.scoring import TOP_LOGPROBS, combine, label as rule_label, verdict_score
from synth.stages.base import SAMPLE_QUESTION_CHARS, LLMStage, StageContext

HARMFUL, SUBCATEGORY = FIELD_COLUMNS["question_harmful"], FIELD_COLUMNS["subcategory"]
QUESTION_JUDGE_COLUMNS = (HARMFUL, SUBCATEGORY, "question_score", "question_judgements", "requested_kind",
                          "requested_subcategory", "question_route")
QUESTION_JUDGE_DTYPES = {HARMFUL: "boolean", SUBCATEGORY: "string", "question_score": "float64",
                         "requested_kind": "string", "requested_subcategory": "string", "question_route": "string"}
# One `question_judgements` entry has these keys for every judge ("" and NaN where it has none):
# the column's type as parquet stores it, for a file in which no row has one (a block of
# conversations, whose seed question's verdicts converse clears): synth/export.py's FIELD_TYPES.
JUDGEMENT_KEYS = ("judge", "harmful", "subcategory", "score", "score_source", "reason", "raw", "error")
QUESTION_JUDGEMENTS_TYPE = pa.list_(pa.field("element", pa.struct(
    [(k, pa.float64() if k == "score" else pa.string()) for k in JUDGEMENT_KEYS])))
# what routing did to a kept row (question_route, comma-separated) and the rejects' reasons
RELABELLED, REASSIGNED = "relabelled", "reassigned"
KIND_MISMATCH, OFF_TOPIC = "question_kind_mismatch", "question_off_topic"
_VERDICT_KEY = "问题有害"
_TASK = "judge_question"


def _judge_column(index: int) -> str:
    return f"_qjudge{index}"


def _carried(column: str) -> str:
    """A question column a request or result column would overwrite (its `seed`) travels as q_<name>."""
    return f"q_{column}" if column in (*REQUEST_COLUMNS, *RESULT_COLUMNS) else column


class JudgeQuestions(LLMStage):
    """The question judges, one round each, then one pass that combines and routes (see the module)."""

    name = "judge_questions"
    reads = ("id", "question", "kind", "subcategory", "subcategory_name", "scenario", "scenario_name")
    columns = None  # the question columns and QUESTION_JUDGE_COLUMNS (set in synth.stages.generation)
    route_column = "question_route"  # the manifest counts relabelled and reassigned questions
    keep = 0.85  # synth plan: rows kept per row in, before any build measured it

    def roles(self, config: PipelineConfig) -> list[Role]:
        return list(config.roles.question_judges)

    def rounds(self, config: PipelineConfig) -> int:
        return len(config.roles.question_judges)

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        if not config.roles.question_judges:
            return {}
        probes = {name: probe.sha256 for name, probe in question_probes(config).items()}
        return {"seed": config.seed, "scores": config.annotate.scores,
                "routing": config.judge_questions.model_dump(mode="json"), **({"probes": probes} if probes else {})}

    def templates(self, catalog) -> dict[str, str]:
        key = "templates/shared/question_judge"
        return {key: catalog.hashes[key]} if key in catalog.hashes else {}

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        if not self.roles(ctx.config):
            return rows.map_batches(unjudged, batch_format="pandas")
        if ctx.catalog.question_judge is None:
            from synth.errors import BadInput

            raise BadInput("roles.question_judges is set but the templates directory has no "
                           "shared/question_judge.yaml")
        check_question_probes(ctx.config, ctx.catalog)
        return super().run(ctx, rows)

    def requests(self, ctx: StageContext, rows: ray.data.Dataset, round: int = 0
                 ) -> list[tuple[Role, ray.data.Dataset]]:
        role = self.roles(ctx.config)[round]
        return [(role, rows.map_batches(question_judge_requests, batch_format="pandas", fn_kwargs={
            "catalog": ctx.catalog, "role": role, "style": ctx.prompt_style(role), "seed": ctx.config.seed,
            "top_logprobs": 0 if ctx.config.annotate.scores == "off" else TOP_LOGPROBS}))]

    def results(self, ctx: StageContext, answered: ray.data.Dataset, rows: ray.data.Dataset, round: int = 0
                ) -> ray.data.Dataset:
        return answered.map_batches(record_question_judgement, fn_kwargs={
            "index": round, "topics": ctx.catalog.topics,
            "probe": question_probes(ctx.config).get(self.roles(ctx.config)[round].name),
            "prior": ctx.config.judge_questions.request_prior}, batch_format="pandas")

    def finish(self, ctx: StageContext, rows: ray.data.Dataset) -> ray.data.Dataset:
        return rows.map_batches(route_questions, fn_kwargs={
            "judges": len(self.roles(ctx.config)), "on_kind_mismatch": ctx.config.judge_questions.on_kind_mismatch,
            "on_off_topic": ctx.config.judge_questions.on_off_topic, "scenario_of": ctx.catalog.scenario_of,
            "threshold": ctx.config.judge_questions.threshold,
            "names": ctx.catalog.subcategories}, batch_format="pandas")

    def estimate(self, planner) -> None:
        """Every question judge reads every question (one prompt: the catalog, then the question)."""
        judges = self.roles(planner.config)
        if not judges:
            planner.keep(self.name, 1.0)
            return
        sample = pd.DataFrame([{"id": "plan", "question": "问" * SAMPLE_QUESTION_CHARS}])
        for role in judges:
            r = question_judge_requests(sample, planner.catalog, role, planner.config.models[role.model].prompt_style,
                                        planner.config.seed)
            planner.count(self.name, role, planner.rows * planner.rate(self.name, "requests", 1.0),
                          float(len(r["prompt"][0]) + len(r["system"][0])))
        planner.keep(self.name, self.keep)


def question_judge_requests(batch: pd.DataFrame, catalog, role: Role, style: str, seed: int,
                            top_logprobs: int = TOP_LOGPROBS) -> pd.DataFrame:
    """One judge's request per question; the question's columns travel with it. A probe
    (`role.probe`) reads the question in the template's `probe` form, no schema."""
    schema = json.dumps(question_verdict_schema(list(catalog.topics)), ensure_ascii=False)
    out = []
    for row in records(batch):
        if role.probe is None:
            rendered = catalog.render(catalog.question_judge, style,
                                      {"question": row["question"], "scenarios": catalog.taxonomy}, "question_judge")
            prompt, system = rendered.prompt, rendered.system
        else:
            rendered = catalog.render(catalog.question_judge.probe, style,
                                      {"question": row["question"], "scenarios": catalog.taxonomy},
                                      "question_judge.probe")
            prompt, system = rendered.prompt, rendered.system
        out.append({**{_carried(k): v for k, v in row.items()}, **request_row(
            request_id=stable_id(row["id"], _TASK, role.name), task=_TASK, prompt=prompt, system=system, role=role,
            base_seed=seed, json_schema=schema if role.probe is None else "",
            top_logprobs=top_logprobs if role.probe is None else 0,
        ), "prompt_style": style})
    columns = [_carried(c) for c in batch.columns]
    return pd.DataFrame(out, columns=[*columns, *[c for c in REQUEST_COLUMNS if c not in columns], "prompt_style"])


def question_probes(config: PipelineConfig) -> dict[str, Any]:
    """The probe of each probe question judge (roles.question_judges[].probe), read and checked."""
    from synth.probe import read_question_probe

    return {role.name: read_question_probe(role.probe, f"roles.question_judges {role.name}: probe")
            for role in config.roles.question_judges if role.probe is not None}


def check_question_probes(config: PipelineConfig, catalog) -> None:
    """A question probe names subcategories of this catalog and was trained on its role's model:
    else a `BadInput` (retrain it)."""
    from synth.errors import BadInput

    from synth.probe import question_probe_fingerprint

    probes = question_probes(config)
    for role in config.roles.question_judges:
        if role.probe is None:
            continue
        if catalog.question_judge.probe is None:
            raise BadInput(f"roles.question_judges {role.name}: a question probe reads the `probe` form of "
                           "templates/shared/question_judge.yaml, which has none")
        probe = probes[role.name]
        if probe.prompt != question_probe_fingerprint(catalog):
            raise BadInput(f"roles.question_judges {role.name}: probe {role.probe} was trained on the probe prompt "
                           f"{probe.prompt}, templates/shared/question_judge.yaml renders "
                           f"{question_probe_fingerprint(catalog)}: retrain it with `synth probe train --questions`")
        unknown = sorted(set(probe.classes) - set(catalog.subcategories) - {OTHER_SUBCATEGORY})
        if unknown:
            raise BadInput(f"roles.question_judges {role.name}: probe {role.probe} places questions in subcategories "
                           f"the catalog does not have ({', '.join(unknown[:5])}): retrain it with "
                           "`synth probe train --questions`")
        if probe.model != config.models[role.model].model:
            raise BadInput(f"roles.question_judges {role.name}: probe {role.probe} was trained on model "
                           f"{probe.model!r}, the role's model is {config.models[role.model].model!r}: retrain it")


def _blank_judgement(judge: str) -> dict[str, Any]:
    """A judgement with every key of JUDGEMENT_KEYS and nothing in it ("" and NaN)."""
    return {**dict.fromkeys(JUDGEMENT_KEYS, ""), "judge": judge, "score": float("nan")}


def question_judgement(row: dict[str, Any], topics: dict[str, str]) -> dict[str, Any]:
    """One judge's answer: harmful (是/否, '' if none), subcategory (the id of the topic it wrote,
    `topics`: Catalog.topics), score P(是), reason, raw text, error."""
    blank = _blank_judgement(row["role"])
    if row["error"]:
        return {**blank, "error": failure_reason(row["error"])}
    prompt = row["prompt"]
    prefix = prompt[prompt.rfind("{"):] if row["prompt_style"] == "completion" and "{" in prompt else ""
    verdict = parse_question_verdict(row["text"], prefix=prefix, subcategories=list(topics))
    if not verdict.label:
        return {**blank, "raw": row["text"], "error": verdict.reason}
    score, source = verdict_score(verdict.label, row["text"], row.get("logprobs") or "", prefix, key=_VERDICT_KEY,
                                  labels=YES_NO)
    written = verdict.fields.get("subcategory", "")
    return {**blank, "harmful": verdict.label, "subcategory": topics.get(written, written), "score": score,
            "score_source": source, "reason": verdict.analysis, "raw": row["text"], "error": verdict.reason}


def question_probe_judgement(row: dict[str, Any], probe, requested: str = "",
                             prior: float | None = None) -> dict[str, Any]:
    """A question probe's answer (synth.probe.QuestionProbe): harmful the side of 0.5 of its
    P(harmful), the score that probability, the subcategory its topic head's most likely class;
    with `prior` (judge_questions.request_prior), that class given the `requested` subcategory as
    evidence too (QuestionProbe.topics). The reason gives both probabilities of the class."""
    from synth.probe import FROM_PROBE, decode_vector

    blank = _blank_judgement(row["role"])
    vector = decode_vector(row["text"]) if not row["error"] else None
    if vector is None or len(vector) != probe.dims:
        return {**blank, "error": failure_reason(row["error"]) if row["error"] else
                f"probe_input: expected a pooled state of {probe.dims} values from a task: embed model"}
    score = round(probe.harm(vector), 6)
    topic, p = probe.topic(vector, requested, prior)
    reason = f"topic p={p:.2f}"
    if prior is not None:
        alone = probe.topics(vector)[probe.classes.index(topic)]
        reason = f"topic p={alone:.2f}, {p:.2f} with the request ({requested}) at prior {prior:g}"
    return {**blank, "harmful": YES_NO[0] if score > 0.5 else YES_NO[1], "subcategory": topic, "score": score,
            "score_source": FROM_PROBE, "reason": reason}


def record_question_judgement(batch: pd.DataFrame, index: int, topics: dict[str, str], probe=None,
                              prior: float | None = None) -> pd.DataFrame:
    """A judge's answers → column `_qjudge<index>`; the question's own columns restored.
    `probe`: the judge's question probe, whose answers are pooled states it scores, with the
    question's requested subcategory (its `subcategory` column) as evidence at `prior`."""
    results = records(batch[["role", "error", "prompt", "prompt_style", "text", "logprobs"]])
    requested = batch["subcategory"].fillna("").astype(str).tolist() if "subcategory" in batch.columns \
        else [""] * len(batch)
    judgements = [question_probe_judgement(r, probe, asked, prior) if probe is not None
                  else question_judgement(r, topics) for r, asked in zip(results, requested)]
    drop = [c for c in (*REQUEST_COLUMNS, *RESULT_COLUMNS, "prompt_style") if c in batch.columns]
    out = batch.drop(columns=drop)
    out = out.rename(columns={f"q_{c}": c for c in (*REQUEST_COLUMNS, *RESULT_COLUMNS) if f"q_{c}" in out.columns})
    out[_judge_column(index)] = judgements
    return out


def unjudged(batch: pd.DataFrame) -> pd.DataFrame:
    """No question judge: the rows as they are, the verdict columns null, the request as provenance."""
    out = batch.assign(**{HARMFUL: None, SUBCATEGORY: None, "question_score": float("nan"),
                          "question_judgements": [[] for _ in range(len(batch))], "question_route": "",
                          "requested_kind": batch["kind"], "requested_subcategory": batch["subcategory"]})
    out[REJECT_COLUMN] = ""
    return out.astype(QUESTION_JUDGE_DTYPES)


def route_questions(batch: pd.DataFrame, judges: int, on_kind_mismatch: str, on_off_topic: str,
                    scenario_of: dict[str, tuple[str, str]], names: dict[str, str],
                    threshold: float = 0.5) -> pd.DataFrame:
    """The judges' verdicts combined (the pair judges' rule) and each question routed (see the module)."""
    columns = [_judge_column(i) for i in range(judges)]
    out = batch.drop(columns=columns).copy()
    harmful_col, subcategory_col, scores, all_judgements, routes, reasons = [], [], [], [], [], []
    kinds, subs, sub_names, scenarios, scenario_names = [], [], [], [], []
    requested = records(batch[["kind", "subcategory", "subcategory_name", "scenario", "scenario_name"]])
    for judgements, asked in zip(zip(*(batch[c] for c in columns)), requested):
        judgements = [dict(j) for j in judgements]
        failures = [j["error"] for j in judgements if j["error"] and not j["harmful"]]
        pending = [f for f in failures if f.startswith(PENDING)]
        harmful = subcategory = score = None
        if not failures:
            judge_scores = [float(j["score"]) for j in judgements]
            score = combine(judge_scores)
            decided, _ = rule_label(judge_scores, threshold, threshold)  # 不安全 = harmful; 有争议 = they disagree
            harmful = True if decided == UNSAFE else False if decided == SAFE else None
            topics = {j["subcategory"] for j in judgements}
            subcategory = topics.pop() if len(topics) == 1 and "" not in topics else None
        kind, sub = asked["kind"], asked["subcategory"]
        sub_name, scenario, scenario_name = asked["subcategory_name"], asked["scenario"], asked["scenario_name"]
        route, reason = [], pending[0] if pending else ""
        if not reason and harmful is not None and harmful != (kind == "harmful"):
            if on_kind_mismatch == "relabel":
                kind = "harmful" if harmful else "benign"
                route.append(RELABELLED)
            elif on_kind_mismatch == "reject":
                reason = KIND_MISMATCH
        if not reason and subcategory is not None and subcategory != sub:
            if on_off_topic == "reject" or on_off_topic == "reassign" and subcategory == OTHER_SUBCATEGORY:
                reason = OFF_TOPIC
            elif on_off_topic == "reassign":
                sub, sub_name = subcategory, names[subcategory]
                scenario, scenario_name = scenario_of[subcategory]
                route.append(REASSIGNED)
        harmful_col.append(harmful)
        subcategory_col.append(subcategory)
        scores.append(score)
        all_judgements.append(judgements)
        routes.append(",".join(route))
        reasons.append(reason)
        kinds.append(kind)
        subs.append(sub)
        sub_names.append(sub_name)
        scenarios.append(scenario)
        scenario_names.append(scenario_name)
    out = out.assign(requested_kind=batch["kind"], requested_subcategory=batch["subcategory"], kind=kinds,
                     subcategory=subs, subcategory_name=sub_names, scenario=scenarios, scenario_name=scenario_names,
                     question_judgements=all_judgements, question_route=routes,
                     question_score=pd.Series(scores, index=batch.index, dtype="float64"),
                     **{HARMFUL: harmful_col, SUBCATEGORY: subcategory_col})
    out[REJECT_COLUMN] = reasons
    return out.astype(QUESTION_JUDGE_DTYPES)


def judged_on_topic(row: dict[str, Any]) -> bool:
    """A row the question judge found harmful-or-not as its kind says and about its subcategory."""
    harmful, judged = row.get(HARMFUL), row.get(SUBCATEGORY)
    if harmful is None or judged is None or harmful != harmful or judged != judged:
        return False
    return bool(harmful) == (row.get("kind") == "harmful") and judged == row.get("subcategory")

