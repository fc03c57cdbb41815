"""elements → queries → augment: from seed pools to questions."""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
import ray.data

from synth.config import PipelineConfig, Role
from synth.engines import REQUEST_COLUMNS, request_row
from synth.engines.base import failure_reason
from synth.errors import BadInput
from synth.obfuscation import PREFIX as OBFUSCATION, TACTICS, obfuscate
from synth.output_parsing import list_item_stops, parse_question_list, parse_single_question
from synth.rows import REJECT_COLUMN, columns as _columns, records, stable_id
from synth.stages.base import DEFAULT_QUESTIONS_PER_CALL_SHARE, SAMPLE_QUESTION_CHARS, LLMStage, Stage, StageContext
from synth.stages.question_judge import QUESTION_JUDGE_COLUMNS, QUESTION_JUDGE_DTYPES, JudgeQuestions
from synth.templates import scenario_vars

KINDS = ("harmful", "benign")


class Elements(Stage):
    """Sample one item of each pool per generation call (the paper's four elements)."""

    name = "elements"
    fans_out = True
    columns = ("id", "scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "elements",
               "template_id", "template_hash", REJECT_COLUMN)

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        gen = config.generation
        return {"seed": config.seed, "calls": [gen.harmful_calls_per_subcategory, gen.benign_calls_per_subcategory]}

    def templates(self, catalog) -> dict[str, str]:
        # the scenarios' pools (and template hashes, recorded per row) and the shared pools
        return {**{f"scenario/{k}": s.hash for k, s in sorted(catalog.scenarios.items())},
                **{k: v for k, v in catalog.hashes.items() if k.startswith("seeds/")}}

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        out = element_rows(ctx.config, ctx.catalog)
        return ray.data.from_items(out, override_num_blocks=max(1, min(8, len(out) // 64 or 1)))

    def estimate(self, planner) -> None:
        planner.notes["elements"] = element_rows(planner.config, planner.catalog)  # exact: the same code
        planner.rows = float(len(planner.notes["elements"]))
        planner.done(self.name)


def element_rows(config: PipelineConfig, catalog) -> list[dict[str, Any]]:
    """The elements stage's rows: one per generator call (also what `synth plan` counts)."""
    gen = config.generation
    calls = {"harmful": gen.harmful_calls_per_subcategory, "benign": gen.benign_calls_per_subcategory}
    out: list[dict[str, Any]] = []
    for scenario in sorted(catalog.scenarios.values(), key=lambda s: s.id):
        for sub in scenario.template.subcategories:
            for kind in KINDS:
                for index in range(calls[kind]):
                    # One RNG per call, seeded by what the call is: adding a scenario
                    # or a subcategory never changes the elements of the others.
                    rng = random.Random(stable_id(config.seed, scenario.id, sub.id, kind, index))
                    elements = {
                        "behavior": rng.choice(scenario.pools.behaviors[sub.id]),
                        "benign_topic": rng.choice(scenario.pools.benign_topics[sub.id]),
                        "task_type": rng.choice(catalog.task_types),
                        "region": rng.choice(catalog.regions),
                        "event": rng.choice(catalog.events),
                    }
                    out.append(
                        {
                            "id": stable_id("elements", config.seed, scenario.id, sub.id, kind, index, elements),
                            "scenario": scenario.id,
                            "scenario_name": scenario.template.name_zh,
                            "subcategory": sub.id,
                            "subcategory_name": sub.name_zh,
                            "kind": kind,
                            "elements": elements,
                            "template_id": f"{scenario.id}.{kind}",
                            "template_hash": scenario.hash,
                            REJECT_COLUMN: "",
                        }
                    )
    return out


class Queries(LLMStage):
    """The generator writes n questions per element combination (harmful or benign look-alike)."""

    name = "queries"
    fans_out = True
    reads = ("id", "scenario", "subcategory", "kind", "elements", "template_id")
    columns = None  # set below: _QUESTION_COLUMNS

    def roles(self, config: PipelineConfig) -> list[Role]:
        return [config.roles.generator]

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        gen = config.generation
        return {"seed": config.seed, "n": gen.questions_per_call, "kept": gen.max_questions_per_call}

    def templates(self, catalog) -> dict[str, str]:
        return {f"scenario/{k}": s.hash for k, s in sorted(catalog.scenarios.items())}

    def requests(self, ctx: StageContext, rows: ray.data.Dataset, round: int = 0
                 ) -> list[tuple[Role, ray.data.Dataset]]:
        [role] = self.roles(ctx.config)
        return [(role, rows.map_batches(question_requests, batch_format="pandas", fn_kwargs={
            "catalog": ctx.catalog, "role": role, "style": ctx.prompt_style(role), "seed": ctx.config.seed,
            "generation": ctx.config.generation}))]

    def results(self, ctx: StageContext, answered: ray.data.Dataset, rows: ray.data.Dataset, round: int = 0
                ) -> ray.data.Dataset:
        [role] = self.roles(ctx.config)
        return answered.map_batches(questions_from_results, batch_format="pandas", fn_kwargs={
            "role": role, "style": ctx.prompt_style(role), "limit": ctx.config.generation.max_questions_per_call})

    def estimate(self, planner) -> None:
        """One call per elements row, its prompt rendered exactly; questions kept per call: the
        earlier build's, else a share of max_questions_per_call."""

        config, gen = planner.config, planner.config.generation
        [role] = self.roles(config)
        elements = planner.notes.get("elements") or []
        if elements:
            rendered = question_requests(pd.DataFrame(elements), planner.catalog, role,
                                         config.models[role.model].prompt_style, config.seed, gen)
            planner.count(self.name, role, len(elements),
                          float((rendered["prompt"].str.len() + rendered["system"].str.len()).mean()))
        planner.rows = len(elements) * planner.rate(self.name, "keep",
                                                    gen.max_questions_per_call * DEFAULT_QUESTIONS_PER_CALL_SHARE)
        planner.done(self.name)


def question_requests(batch: pd.DataFrame, catalog, role: Role, style: str, seed: int, generation) -> pd.DataFrame:
    """One generator request per elements row; the row's columns travel with it."""
    requests = []
    for row in records(batch):
        scenario = catalog.scenarios[row["scenario"]]
        sub = next(s for s in scenario.template.subcategories if s.id == row["subcategory"])
        variables = {
            "scenario": scenario_vars(scenario.template),
            "subcategory": sub.model_dump(),
            **{k: row["elements"][k] for k in ("behavior", "benign_topic", "task_type", "region", "event")},
            "n": generation.questions_per_call,
        }
        rendered = catalog.render(getattr(scenario.template, row["kind"]), style, variables, row["template_id"])
        requests.append(
            request_row(
                request_id=row["id"], task="questions", prompt=rendered.prompt, system=rendered.system,
                role=role, base_seed=seed,
                extra_stop=list_item_stops(rendered.prompt, generation.max_questions_per_call,
                                           continues_list=style == "completion"),
            )
        )
    return pd.concat([batch.reset_index(drop=True), pd.DataFrame(requests)], axis=1)


def questions_from_results(batch: pd.DataFrame, role: Role, style: str, limit: int) -> pd.DataFrame:
    """The generator's answers → one row per parsed question (at most `limit`), or one reject per call."""
    out = []
    for row in records(batch):
        base = {
            "scenario": row["scenario"], "scenario_name": row["scenario_name"],
            "subcategory": row["subcategory"], "subcategory_name": row["subcategory_name"],
            "kind": row["kind"], "elements": row["elements"], "attack": "none",
            "template_id": row["template_id"], "template_hash": row["template_hash"],
            "generator": role.name, "seed": int(row["seed"]), "parent_id": row["id"], "source_question_id": "",
            "gen_finish_reason": row["finish_reason"], "gen_completion_tokens": int(row["completion_tokens"]),
        }
        if row["error"]:
            out.append({**base, "id": row["id"], "question": "", "raw": "", REJECT_COLUMN: failure_reason(row["error"])})
            continue
        parsed = parse_question_list(row["text"], limit, continues_list_at=1 if style == "completion" else None)
        if parsed.reason:
            out.append({**base, "id": row["id"], "question": "", "raw": row["text"], REJECT_COLUMN: parsed.reason})
            continue
        for i, question in enumerate(parsed.items):
            out.append({**base, "id": stable_id(row["id"], i, question), "question": question, "raw": "",
                        REJECT_COLUMN: ""})
    return pd.DataFrame(out, columns=list(_QUESTION_COLUMNS))


class Augment(LLMStage):
    """Red-team rewrites of a share of the harmful questions; originals pass through."""

    name = "augment"
    fans_out = True
    reads = ("id", "question", "kind")
    columns = None  # set below: _QUESTION_COLUMNS

    def roles(self, config: PipelineConfig) -> list[Role]:
        return [config.roles.generator]

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        # obfuscation is the obfuscate stage's (after dedup_questions)
        return {"seed": config.seed, "augment": config.augment.model_dump(mode="json", exclude={"obfuscation"})}

    def templates(self, catalog) -> dict[str, str]:
        return {"templates/shared/augment": catalog.hashes["templates/shared/augment"]}

    def requests(self, ctx: StageContext, rows: ray.data.Dataset, round: int = 0
                 ) -> list[tuple[Role, ray.data.Dataset]]:
        [role] = self.roles(ctx.config)
        catalog, aug = ctx.catalog, ctx.config.augment
        tactics = aug.tactics or [t.id for t in catalog.augment.tactics]
        for tactic_id in tactics:
            catalog.tactic(tactic_id)  # unknown tactic ids fail before any request is sent
        choice = {"tactics": tactics, "share": aug.share, "seed": ctx.config.seed}
        return [(role, rows.filter(gets_tactic, fn_kwargs=choice).map_batches(augment_requests, batch_format="pandas",
                                                                              fn_kwargs={**choice, "catalog": catalog,
                                                                                         "role": role,
                                                                                         "style": ctx.prompt_style(role)}))]

    def results(self, ctx: StageContext, answered: ray.data.Dataset, rows: ray.data.Dataset, round: int = 0
                ) -> ray.data.Dataset:
        """The originals pass through; each rewrite is a new row."""
        originals = rows.map_batches(_with_reject_column, batch_format="pandas", fn_args=(_QUESTION_COLUMNS,))
        return originals.union(answered.map_batches(augmented_rows, batch_format="pandas"))

    def estimate(self, planner) -> None:
        """A share of the harmful questions rewritten by the generator (an earlier build's rates are
        rescaled to this config's harmful share)."""

        config = planner.config
        share, scale = planner.harmful_share()
        before = planner.previous.get(self.name)
        questions = planner.rows
        requests = questions * (before["requests"] * scale if before else config.augment.share * share)
        if requests:
            planner.count(self.name, config.roles.generator, requests, SAMPLE_QUESTION_CHARS * 4)
        planner.rows = questions * (1 + (before["keep"] - 1) * scale if before
                                    else 1 + config.augment.share * share * 0.9)
        planner.done(self.name)


def chosen_tactic(row_id: str, tactics: list[str], share: float, seed: int) -> str | None:
    """Deterministic from the row id: the same questions get the same tactics."""
    rng = random.Random(stable_id("augment", seed, row_id))
    return rng.choice(tactics) if rng.random() < share else None


def gets_tactic(row: dict[str, Any], tactics: list[str], share: float, seed: int) -> bool:
    """Only harmful questions are rewritten, and only those a tactic is chosen for."""
    return row["kind"] == "harmful" and chosen_tactic(row["id"], tactics, share, seed) is not None


def augment_requests(batch: pd.DataFrame, catalog, role: Role, style: str, seed: int, tactics: list[str],
                     share: float) -> pd.DataFrame:
    """One rewrite request per harmful question a tactic is chosen for; the others are dropped."""
    out = []
    for row in records(batch):
        tactic_id = chosen_tactic(row["id"], tactics, share, seed) if row["kind"] == "harmful" else None
        if tactic_id is None:
            continue
        scenario = catalog.scenarios[row["scenario"]]
        sub = next(s for s in scenario.template.subcategories if s.id == row["subcategory"])
        rendered = catalog.render(
            catalog.tactic(tactic_id), style,
            {"question": row["question"], "scenario": scenario_vars(scenario.template), "subcategory": sub.model_dump()},
            f"augment.{tactic_id}",
        )
        new_id = stable_id(row["id"], "augment", tactic_id)
        out.append({**row, **request_row(request_id=new_id, task="augment", prompt=rendered.prompt,
                                         system=rendered.system, role=role, base_seed=seed),
                    "attack": tactic_id, "parent_id": row["id"], "source_question_id": row["id"]})
    return pd.DataFrame(out, columns=_columns(batch.columns, REQUEST_COLUMNS))


def augmented_rows(batch: pd.DataFrame) -> pd.DataFrame:
    """The rewrites' answers → one question row each (its id: the request's), or a reject."""
    out = []
    for row in records(batch):
        base = {k: row[k] for k in _QUESTION_COLUMNS if k not in ("id", "question", "seed", "raw", REJECT_COLUMN)}
        base.update(id=row["request_id"], seed=int(row["seed"]), gen_finish_reason=row["finish_reason"],
                    gen_completion_tokens=int(row["completion_tokens"]))
        if row["error"]:
            out.append({**base, "question": "", "raw": "", REJECT_COLUMN: failure_reason(row["error"])})
            continue
        parsed = parse_single_question(row["text"])
        if parsed.reason:
            out.append({**base, "question": "", "raw": row["text"], REJECT_COLUMN: parsed.reason})
        else:
            out.append({**base, "question": parsed.items[0], "raw": "", REJECT_COLUMN: ""})
    return pd.DataFrame(out, columns=list(_QUESTION_COLUMNS))


def _with_reject_column(batch: pd.DataFrame, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """A stage's input rows with an empty reject reason, as exactly the stage's `columns`: every
    batch of a stage has one schema, so the empty files the runner writes for its outputs do not
    depend on which batch reached the driver first. By default Obfuscate's: the question columns
    and, where a question judge ran before it, its verdict columns (null where it did not)."""
    batch = batch.copy()
    batch[REJECT_COLUMN] = ""
    columns = _JUDGED_QUESTION_COLUMNS if columns is None else columns
    return batch.reindex(columns=list(columns)).astype({k: v for k, v in QUESTION_JUDGE_DTYPES.items()
                                                        if k in columns})


class Obfuscate(Stage):
    """Obfuscated copies of a share of the questions (synth/obfuscation.py: 谐音, variant
    characters, pinyin, 拆字, symbols, full-width and spacing, mixed script), no model call.

    After dedup_questions: every copy is made from a question that is already unique, and is
    never compared with its source (dedup_pairs lets copies through). Harmful and benign
    questions alike, so a guard does not learn "obfuscated = unsafe". A copy keeps its
    source's columns, with `attack` = obfuscation:<tactic>, `source_question_id` and
    `parent_id` = the source's id. With `augment.obfuscation.share` 0 the rows pass through.
    """

    name = "obfuscate"
    fans_out = True
    reads = ("id", "question", "attack")
    columns = None  # set below: _JUDGED_QUESTION_COLUMNS

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        o = config.augment.obfuscation
        return {"seed": config.seed, "obfuscation": o.model_dump(mode="json")} if o.share else {}

    def templates(self, catalog) -> dict[str, str]:
        return {"seeds/obfuscation": catalog.hashes.get("seeds/obfuscation", "")}

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        o = ctx.config.augment.obfuscation
        if not o.share:
            return rows.map_batches(_with_reject_column, batch_format="pandas")
        if ctx.catalog.obfuscation is None:
            raise BadInput("augment.obfuscation.share is set but the seeds directory has no obfuscation/ tables")
        return rows.map_batches(with_obfuscated, batch_format="pandas", fn_kwargs={
            "tables": ctx.catalog.obfuscation, "tactics": o.tactics or list(TACTICS), "share": o.share,
            "seed": ctx.config.seed})

    def estimate(self, planner) -> None:
        planner.rows *= 1 + planner.config.augment.obfuscation.share  # one obfuscated copy per chosen question
        planner.done(self.name)


def with_obfuscated(batch: pd.DataFrame, tables, tactics: list[str], share: float, seed: int) -> pd.DataFrame:
    """The batch's rows, each followed by its obfuscated copy when one is drawn for it."""
    batch = _with_reject_column(batch)  # the input is kept rows: the runner dropped the column
    out = []
    for row in records(batch):
        out.append(row)
        rng = random.Random(stable_id("obfuscate", seed, row["id"]))
        if rng.random() >= share or str(row["attack"]).startswith(OBFUSCATION) or not row["question"]:
            continue
        done = obfuscate(row["question"], tactics, rng, tables)
        if done is None:
            continue
        tactic, question = done
        out.append({**row, "id": stable_id(row["id"], "obfuscate", tactic), "question": question,
                    "attack": f"{OBFUSCATION}{tactic}", "parent_id": row["id"], "source_question_id": row["id"]})
    return pd.DataFrame(out, columns=batch.columns)


_QUESTION_COLUMNS = (
    "id", "scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "elements", "attack",
    "template_id", "template_hash", "generator", "seed", "parent_id", "gen_finish_reason", "gen_completion_tokens",
    "question", "raw", "source_question_id", REJECT_COLUMN,
)

# after judge_questions: its verdict columns too (synth/stages/question_judge.py)
_JUDGED_QUESTION_COLUMNS = (*_QUESTION_COLUMNS[:-1], *QUESTION_JUDGE_COLUMNS, REJECT_COLUMN)
Queries.columns = Augment.columns = _QUESTION_COLUMNS
Obfuscate.columns = JudgeQuestions.columns = _JUDGED_QUESTION_COLUMNS
