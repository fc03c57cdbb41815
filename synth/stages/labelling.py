"""respond → annotate: responders answer every question, two judges label every pair."""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
import ray.data

from synth.config import PipelineConfig, Role
from synth.engines import REQUEST_COLUMNS, RESULT_COLUMNS, VERDICT_SCHEMA_JSON, request_row
from synth.output_parsing import parse_verdict
from synth.rows import REJECT_COLUMN, columns as _columns, stable_id
from synth.stages.base import Stage, StageContext

PAIR_COLUMNS = (
    "id", "question_id", "scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "elements",
    "attack", "template_id", "template_hash", "generator", "responder", "persona", "seed", "question",
    "response", "finish_reason", "response_tokens", REJECT_COLUMN,
)
LABELLED_COLUMNS = (*PAIR_COLUMNS[:-1], "judgements", "label", "analyze", REJECT_COLUMN)
# Pair columns a judge request or its result would overwrite (the responder's `seed` and
# `finish_reason`): carried through the judges' requests under another name.
_CARRIED = {k: f"pair_{k}" for k in PAIR_COLUMNS if k in (*REQUEST_COLUMNS, *RESULT_COLUMNS)}
HARD_POOL = "hard"
DISAGREE = "judges_disagree"


class Respond(Stage):
    """Every responder (or a deterministic subset per question) answers each question."""

    name = "respond"
    input = "dedup_questions"
    fans_out = True

    def roles(self, config: PipelineConfig) -> list[Role]:
        return list(config.roles.responders)

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        responders = self.roles(ctx.config)
        per_question = ctx.config.respond.responders_per_question
        catalog, seed = ctx.catalog, ctx.config.seed

        def picks(question_id: str) -> set[str]:
            names = [r.name for r in responders]
            if per_question is None or per_question >= len(names):
                return set(names)
            return set(random.Random(stable_id("respond", seed, question_id)).sample(names, per_question))

        def requests_for(index: int, role: Role):
            style = ctx.prompt_style(role)
            persona = catalog.persona(role.persona, index)

            def to_requests(batch: pd.DataFrame) -> pd.DataFrame:
                out = []
                for row in batch.to_dict("records"):
                    if role.name not in picks(row["id"]):
                        continue
                    rendered = catalog.render(
                        catalog.respond, style, {"question": row["question"], "persona": persona.model_dump()}, "respond"
                    )
                    out.append({**row, **request_row(
                        request_id=stable_id(row["id"], "respond", role.name), task="respond", prompt=rendered.prompt,
                        system=rendered.system, role=role, base_seed=seed,
                    ), "question_id": row["id"], "persona": persona.id})
                return pd.DataFrame(out, columns=_columns(batch.columns, REQUEST_COLUMNS, ("question_id", "persona")))

            return role, rows.map_batches(to_requests, batch_format="pandas")

        results = ctx.generate([requests_for(i, role) for i, role in enumerate(responders)])

        def to_pairs(batch: pd.DataFrame) -> pd.DataFrame:
            out = []
            for row in batch.to_dict("records"):
                pair = {k: row[k] for k in PAIR_COLUMNS if k in row}
                failed = row["error"] or not row["text"].strip()
                pair.update(
                    id=row["request_id"], responder=row["role"], seed=int(row["seed"]), response=row["text"].strip(),
                    finish_reason=row["finish_reason"], response_tokens=int(row["completion_tokens"]),
                    **{REJECT_COLUMN: (f"llm_error: {row['error']}" if row["error"] else "empty_response") if failed else ""},
                )
                out.append(pair)
            return pd.DataFrame(out, columns=list(PAIR_COLUMNS))

        return results.map_batches(to_pairs, batch_format="pandas")


class Annotate(Stage):
    """Two judges label each pair: agreement → label; disagreement → the hard pool."""

    name = "annotate"
    input = "respond"
    diverted = {DISAGREE: HARD_POOL}

    def roles(self, config: PipelineConfig) -> list[Role]:
        return list(config.roles.judges)

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        judges = self.roles(ctx.config)
        catalog, seed = ctx.catalog, ctx.config.seed

        def requests_for(role: Role):
            style = ctx.prompt_style(role)

            def to_requests(batch: pd.DataFrame) -> pd.DataFrame:
                out = []
                for row in batch.to_dict("records"):
                    rendered = catalog.render(
                        catalog.judge, style, {"question": row["question"], "response": row["response"]}, "judge"
                    )
                    carried = {_CARRIED.get(k, k): v for k, v in row.items()}
                    out.append({**carried, **request_row(
                        request_id=stable_id(row["id"], "judge", role.name), task="judge", prompt=rendered.prompt,
                        system=rendered.system, role=role, base_seed=seed, json_schema=VERDICT_SCHEMA_JSON,
                    ), "prompt_style": style})
                carried_columns = [_CARRIED.get(c, c) for c in batch.columns]
                return pd.DataFrame(out, columns=_columns(carried_columns, REQUEST_COLUMNS, "prompt_style"))

            return role, rows.map_batches(to_requests, batch_format="pandas")

        results = ctx.generate([requests_for(role) for role in judges])
        judge_order = [j.name for j in judges]
        # Both verdicts of a pair meet in one group. Few partitions: the shuffle's cost
        # is per partition, and a pair's two rows are tiny.
        partitions = _partitions_for(rows)
        return results.groupby("id", num_partitions=partitions).map_groups(
            lambda group: _combine_verdicts(group, judge_order), batch_format="pandas"
        )


def _partitions_for(rows: ray.data.Dataset) -> int:
    return max(1, min(64, rows.count() // 50_000 + 1))


def _judgement(row: dict[str, Any]) -> dict[str, str]:
    if row["error"]:
        return {"judge": row["role"], "verdict": "", "analysis": "", "raw": "", "error": f"llm_error: {row['error']}"}
    # Completion-style judges are prompted with the opening of the JSON object and continue it.
    prompt = row["prompt"]
    prefix = prompt[prompt.rfind("{"):] if row["prompt_style"] == "completion" and "{" in prompt else ""
    verdict = parse_verdict(row["text"])
    if verdict.reason and prefix:
        verdict = parse_verdict(row["text"], prefix=prefix)
    return {"judge": row["role"], "verdict": verdict.label, "analysis": verdict.analysis, "raw": row["text"],
            "error": verdict.reason}


def _combine_verdicts(group: pd.DataFrame, judge_order: list[str]) -> pd.DataFrame:
    records = sorted(group.to_dict("records"), key=lambda r: judge_order.index(r["role"]))
    judgements = [_judgement(r) for r in records]
    pair = {k: records[0][_CARRIED.get(k, k)] for k in PAIR_COLUMNS if k != REJECT_COLUMN}
    failures = [j["error"] for j in judgements if j["error"]]
    verdicts = {j["verdict"] for j in judgements}
    if failures:
        reason, label = f"judge_failed: {failures[0]}", ""
    elif len(verdicts) > 1:
        reason, label = DISAGREE, ""
    else:
        reason, label = "", verdicts.pop()
    analyze = next((j["analysis"] for j in judgements if j["verdict"] == label), "") if label else ""
    return pd.DataFrame([{**pair, "judgements": judgements, "label": label, "analyze": analyze, REJECT_COLUMN: reason}],
                        columns=list(LABELLED_COLUMNS))
