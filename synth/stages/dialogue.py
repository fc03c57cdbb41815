"""converse: a share of the questions seeds multi-turn conversations.

After obfuscate, every question passes through as a one-turn row (`synth.rows.SINGLE_TURN`),
and a share of the plain ones (`dialogues.share`; never an augmented or obfuscated copy)
also seeds one conversation. The share holds in each scenario × kind: of its n plain questions,
the round(share × n) with the lowest draw (a seeded hash of the question's id), and at least
`dialogues.min_per_group` (default one), so a small scenario is never left without conversations
by chance (`conversation_cutoffs`).
A seed question gets a strategy of its kind (templates/shared/dialogue.yaml,
`synth.dialogue_templates`), a number of user turns drawn from the strategy's range cut to
`dialogues.turns`, and the responder that will answer it. The conversation keeps its seed
question's scenario, subcategory, kind and elements: the target behaviour (harmful) or the
benign topic (benign) is what the user-turn writer is steered towards.

The turns are rounds of the stage (`LLMStage` rounds, materialized in between): round 2k-2
has the user-turn writer (`roles.user_turn_writer`, default the generator) write user turn k
of every conversation that has one, from the strategy's plan prompt and the conversation so
far; round 2k-1 has the conversation's responder answer it with the whole history (its chat
template for chat style, respond.yaml's transcript for completion style). The last user turn
is written but not answered here: it becomes the row's `question`, the turns before it its
`history`, and the respond stage answers it like any question, so the pair judges then label
that last answer in context. Every request goes through the request cache with its own seed,
so a rebuild after a crash sends only what was not answered, and a transient failure leaves
the conversation pending (the next run sends it again), a permanent one a reject.
"""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
import ray.data

from synth.config import PipelineConfig, Role
from synth.engines import REQUEST_COLUMNS, request_row
from synth.engines.base import failure_reason, history_json, parse_history
from synth.errors import BadInput
from synth.output_parsing import parse_user_turn
from synth.rows import (DIALOGUE_COLUMNS, DIALOGUE_DTYPES, REJECT_COLUMN, SINGLE_TURN, columns as _columns, records,
                        stable_id)
from synth.stages.base import SAMPLE_QUESTION_CHARS, LLMStage, StageContext
from synth.stages.generation import Obfuscate
from synth.stages.labelling import carry, picked_responders, respond_request, restore
from synth.stages.question_judge import HARMFUL, QUESTION_JUDGE_DTYPES, SUBCATEGORY
from synth.templates import scenario_vars

DIALOGUE_ATTACK = "dialogue"  # a conversation's `attack`
# The seed question's verdict columns describe its own text, not the conversation's: cleared.
_CLEARED = {HARMFUL: None, SUBCATEGORY: None, "question_score": float("nan"), "question_judgements": None,
            "question_route": ""}


def user_turn_writer(config: PipelineConfig) -> Role:
    return config.roles.user_turn_writer or config.roles.generator


def turn_range(strategy, config: PipelineConfig) -> tuple[int, int] | None:
    """The user turns a conversation of `strategy` may have under this config (None: none)."""
    low, high = max(strategy.turns[0], config.dialogues.turns[0]), min(strategy.turns[1], config.dialogues.turns[1])
    return (low, high) if low <= high else None


def usable_strategies(config: PipelineConfig, catalog) -> dict[str, list[dict[str, Any]]]:
    """Per kind, the strategies this config uses, each with its turn range (BadInput naming the
    config field when a kind has none, or a strategy id is unknown)."""
    if catalog.dialogue is None:
        raise BadInput("dialogues.share is set but the templates have no shared/dialogue.yaml")
    known = {s.id for s in catalog.dialogue.strategies}
    unknown = [s for s in config.dialogues.strategies if s not in known]
    if unknown:
        raise BadInput(f"dialogues.strategies: {', '.join(unknown)} not in {catalog.dialogue.path} "
                       f"(known: {', '.join(sorted(known))})")
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in ("harmful", "benign"):
        chosen = [s for s in catalog.dialogue.of_kind(kind)
                  if not config.dialogues.strategies or s.id in config.dialogues.strategies]
        usable = [{"id": s.id, "turns": turn_range(s, config)} for s in chosen if turn_range(s, config)]
        if not usable:
            raise BadInput(f"dialogues: no {kind} strategy of {catalog.dialogue.path} can have "
                           f"{config.dialogues.turns[0]}–{config.dialogues.turns[1]} user turns "
                           f"(dialogues.turns, dialogues.strategies)")
        out[kind] = usable
    return out


class Converse(LLMStage):
    name = "converse"
    fans_out = True
    reads = ("id", "kind", "elements", "attack", "question")
    columns = (*Obfuscate.columns[:-1], *DIALOGUE_COLUMNS, REJECT_COLUMN)
    rounds_read_twice = True

    def roles(self, config: PipelineConfig) -> list[Role]:
        return [user_turn_writer(config), *config.roles.responders] if config.dialogues.share else []

    def rounds(self, config: PipelineConfig) -> int:
        # user turn k (even rounds) and its answer (odd rounds), the last user turn unanswered
        return 2 * config.dialogues.turns[1] - 1 if config.dialogues.share else 0

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        if not config.dialogues.share:
            return {}
        from synth.filters import user_turn_filters

        turn_filters = {f.name for f in user_turn_filters(config.filters.questions)}
        return {"seed": config.seed, "dialogues": config.dialogues.model_dump(mode="json"),
                "responders_per_question": config.respond.responders_per_question,
                "user_turn_filters": [f.model_dump(mode="json") for f in config.filters.questions
                                      if f.name in turn_filters]}

    def templates_used(self, catalog, config: PipelineConfig) -> dict[str, str]:
        if not config.dialogues.share:
            return {}
        return {name: catalog.hashes[name] for name in ("templates/shared/dialogue", "templates/shared/respond")}

    def begin(self, ctx: StageContext, rows: ray.data.Dataset) -> ray.data.Dataset:
        config = ctx.config
        strategies = usable_strategies(config, ctx.catalog) if config.dialogues.share else {}
        cutoffs = {}
        if strategies:  # four short columns of every question, on the driver: the draws per scenario × kind
            cutoffs = conversation_cutoffs(rows.select_columns(["id", "scenario", "kind", "attack"]).to_pandas(),
                                           config.dialogues.share, strategies, config.seed,
                                           config.dialogues.min_per_group)
        return rows.map_batches(with_conversations, batch_format="pandas", fn_kwargs={
            "cutoffs": cutoffs, "strategies": strategies, "seed": config.seed,
            "responders": [r.name for r in config.roles.responders],
            "per_question": config.respond.responders_per_question, "writer": user_turn_writer(config).name,
            "dialogue_hash": ctx.catalog.hashes.get("templates/shared/dialogue", ""),
            "columns": list(self.columns)})

    def requests(self, ctx: StageContext, rows: ray.data.Dataset, round: int = 0
                 ) -> list[tuple[Role, ray.data.Dataset]]:
        turn, side = round // 2 + 1, ("user", "assistant")[round % 2]
        if side == "user":
            role = user_turn_writer(ctx.config)
            return [(role, rows.map_batches(user_turn_requests, batch_format="pandas", fn_kwargs={
                "catalog": ctx.catalog, "role": role, "style": ctx.prompt_style(role), "seed": ctx.config.seed,
                "turn": turn}))]
        return [(role, rows.map_batches(answer_requests, batch_format="pandas", fn_kwargs={
            "catalog": ctx.catalog, "role": role, "style": ctx.prompt_style(role), "seed": ctx.config.seed,
            "persona": ctx.catalog.persona(role.persona, index), "turn": turn}))
            for index, role in enumerate(ctx.config.roles.responders)]

    def results(self, ctx: StageContext, answered: ray.data.Dataset, rows: ray.data.Dataset, round: int = 0
                ) -> ray.data.Dataset:
        from synth.filters import user_turn_filters

        turn, side = round // 2 + 1, ("user", "assistant")[round % 2]
        filters = user_turn_filters(ctx.config.filters.questions) if side == "user" else []
        written = answered.map_batches(record_turn, batch_format="pandas", fn_kwargs={
            "side": side, "turn": turn, "columns": list(self.columns), "filters": filters})
        untouched = rows.map_batches(not_in_round, batch_format="pandas", fn_kwargs={"side": side, "turn": turn})
        return written.union(untouched)

    def estimate(self, planner) -> None:
        """A share of the plain questions becomes conversations: per turn k, the writer's request
        (its prompt holding the conversation so far) and, before the last turn, the answer's
        (the whole history in its prompt)."""
        config, catalog = planner.config, planner.catalog
        if not config.dialogues.share:
            planner.done(self.name)
            return
        options = config.plan
        strategies = [s for kind in usable_strategies(config, catalog).values() for s in kind]
        share = config.dialogues.share
        writer, responders = user_turn_writer(config), config.roles.responders
        answer_chars = sum(r.sampling.max_tokens * options.output_fill * options.chars_per_token
                           for r in responders) / len(responders)
        turn_chars = writer.sampling.max_tokens * options.output_fill * options.chars_per_token
        def reaching(turn: int) -> float:  # the share of conversations with `turn` user turns or more
            return sum(max(0, s["turns"][1] - max(turn, s["turns"][0]) + 1) / (s["turns"][1] - s["turns"][0] + 1)
                       for s in strategies) / len(strategies)

        last = config.dialogues.turns[1]
        # requests per row in: per conversation, one per user turn and one per answered turn; an
        # earlier build's measured rate (--from-build) rescales the per-turn counts
        per_row = share * sum(reaching(k) + reaching(k + 1) for k in range(1, last + 1))
        conversations = planner.rows * share * planner.rate(self.name, "requests", per_row) / per_row
        for turn in range(1, last + 1):
            reach, answered = reaching(turn), reaching(turn + 1)
            history_chars = (turn - 1) * (turn_chars + answer_chars)
            longest = next((s for s in strategies if s["turns"][1] >= turn), None)
            if longest is not None:
                strategy = catalog.dialogue.strategy(longest["id"])
                elements = planner.notes.get("elements") or [None]
                variables = _plan_variables(catalog, strategy, elements[0], turn, turn,
                                            _sample_history(turn - 1, int(turn_chars), int(answer_chars)))
                rendered = catalog.dialogue.render_plan(catalog, strategy, config.models[writer.model].prompt_style,
                                                        variables)
                planner.count(self.name, writer, conversations * reach,
                              float(len(rendered.prompt) + len(rendered.system)))
            if answered:
                for role in responders:
                    planner.count(self.name, role, conversations * answered / len(responders),
                                  float(history_chars + turn_chars + SAMPLE_QUESTION_CHARS))
        # for the judges' every-turn labels (annotate.every_turn): earlier answers per row after this stage
        planner.notes["earlier_answers"] = sum(reaching(k + 1) for k in range(1, last)) * share / (1 + share)
        planner.rows *= planner.rate(self.name, "keep", 1 + share)
        planner.done(self.name)


# -- the rows ----------------------------------------------------------------------


def _draw(seed: int, row_id: str) -> tuple[random.Random, float]:
    """A question's draw in [0, 1) and the generator that then picks its strategy, turns and responder."""
    rng = random.Random(stable_id("converse", seed, row_id))
    return rng, rng.random()


def _group(row: dict[str, Any]) -> str:
    return f"{row['scenario']}/{row['kind']}"


def conversation_cutoffs(rows: pd.DataFrame, share: float, strategies: dict[str, list[dict[str, Any]]],
                         seed: int, at_least: int = 1) -> dict[str, float]:
    """Per scenario × kind ("scenario/kind"), the highest draw that seeds a conversation: the
    round(share × n) plain questions with the lowest draws, at least `at_least` of them (or all n
    when fewer; none when share is 0)."""
    if not share or rows.empty:
        return {}
    plain = rows[(rows["attack"] == "none") & rows["kind"].isin(list(strategies))]
    draws: dict[str, list[float]] = {}
    for row in records(plain):
        draws.setdefault(_group(row), []).append(_draw(seed, row["id"])[1])
    return {group: sorted(us)[min(len(us), max(at_least, round(share * len(us)))) - 1]
            for group, us in sorted(draws.items())}


def with_conversations(batch: pd.DataFrame, cutoffs: dict[str, float], strategies: dict[str, list[dict[str, Any]]],
                       seed: int, responders: list[str], per_question: int | None, writer: str, dialogue_hash: str,
                       columns: list[str]) -> pd.DataFrame:
    """Every row as a one-turn row, each followed by the conversation it seeds, when its draw is
    within its scenario × kind's cutoff (`conversation_cutoffs`; not yet written: `history` "" and
    `question` "", `turns` planned)."""
    out = []
    for row in records(batch):
        row = {**row, **SINGLE_TURN, REJECT_COLUMN: ""}
        out.append(row)
        if row["attack"] != "none" or row["kind"] not in strategies or _group(row) not in cutoffs:
            continue
        rng, draw = _draw(seed, row["id"])
        if draw > cutoffs[_group(row)]:
            continue
        strategy = rng.choice(strategies[row["kind"]])
        turns = rng.randint(*strategy["turns"])
        responder = rng.choice(sorted(picked_responders(row["id"], responders, per_question, seed)))
        out.append({**row, **_CLEARED, "id": stable_id(row["id"], "converse", strategy["id"], turns),
                    "attack": DIALOGUE_ATTACK, "parent_id": row["id"], "source_question_id": row["id"],
                    "generator": writer, "template_id": f"dialogue.{strategy['id']}", "template_hash": dialogue_hash,
                    "question": "", "raw": "", "strategy": strategy["id"], "turns": turns, "history": "",
                    "history_responder": responder})
    return _typed(pd.DataFrame(out, columns=columns))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({**{k: v for k, v in QUESTION_JUDGE_DTYPES.items() if k in frame.columns}, **DIALOGUE_DTYPES})


def _in_round(row: dict[str, Any], side: str, turn: int) -> bool:
    """Whether a row takes part in this round: a conversation not rejected that has user turn
    `turn` (user side) or answers it (assistant side: not its last turn)."""
    if not row["strategy"] or row[REJECT_COLUMN]:
        return False
    return int(row["turns"]) >= turn if side == "user" else int(row["turns"]) > turn


def not_in_round(batch: pd.DataFrame, side: str, turn: int) -> pd.DataFrame:
    keep = [not _in_round(row, side, turn) for row in records(batch)]
    return _typed(batch[keep])


def _plan_variables(catalog, strategy, row: dict[str, Any] | None, turn: int, turns: int,
                    history: list[dict[str, str]]) -> dict[str, Any]:
    from synth.dialogue_templates import plan_variables

    if row is None:  # synth plan before any row: the first scenario's first subcategory
        scenario = next(iter(catalog.scenarios.values())).template
        sub, target = scenario.subcategories[0], "问" * SAMPLE_QUESTION_CHARS
    else:
        # every scenario, not only the config's: the question judge may have reassigned the seed question
        scenario = catalog.every_scenario[row["scenario"]]
        sub = next(s for s in scenario.subcategories if s.id == row["subcategory"])
        elements = row["elements"]
        target = elements["behavior" if strategy.kind == "harmful" else "benign_topic"]
    turns = max(turns, strategy.turns[0])
    return plan_variables(strategy, scenario=scenario_vars(scenario),
                          subcategory={"id": sub.id, "name_zh": sub.name_zh, "name_en": sub.name_en},
                          target=target, turn=turn, turns=min(turns, strategy.turns[1]), history=history)


def _sample_history(exchanges: int, user_chars: int, answer_chars: int) -> list[dict[str, str]]:
    return [m for _ in range(exchanges) for m in ({"role": "user", "content": "问" * user_chars},
                                                  {"role": "assistant", "content": "答" * answer_chars})]


def user_turn_requests(batch: pd.DataFrame, catalog, role: Role, style: str, seed: int, turn: int) -> pd.DataFrame:
    """The writer's request for user turn `turn` of each conversation that has one."""
    out = []
    for row in records(batch):
        if not _in_round(row, "user", turn):
            continue
        strategy = catalog.dialogue.strategy(row["strategy"])
        variables = _plan_variables(catalog, strategy, row, turn, int(row["turns"]), parse_history(row["history"]))
        rendered = catalog.dialogue.render_plan(catalog, strategy, style, variables)
        out.append({**carry(row), **request_row(
            request_id=stable_id(row["id"], "converse", "user", turn), task="user_turn", prompt=rendered.prompt,
            system=rendered.system, role=role, base_seed=seed,
            # a base model continues the transcript's "用户：" line: the turn ends with it
            extra_stop=("\n",) if style == "completion" else ())})
    return pd.DataFrame(out, columns=_columns(list(carry(dict.fromkeys(batch.columns))), REQUEST_COLUMNS))


def answer_requests(batch: pd.DataFrame, catalog, role: Role, style: str, seed: int, persona, turn: int
                    ) -> pd.DataFrame:
    """The conversation's responder's request to answer user turn `turn` after the turns before it."""
    out = []
    for row in records(batch):
        if row["history_responder"] != role.name or not _in_round(row, "assistant", turn):
            continue
        messages = parse_history(row["history"])
        out.append({**carry(row), **respond_request(
            catalog, role, style, persona, seed, stable_id(row["id"], "converse", "assistant", turn),
            messages[-1]["content"], messages[:-1])})
    return pd.DataFrame(out, columns=_columns(list(carry(dict.fromkeys(batch.columns))), REQUEST_COLUMNS))


def record_turn(batch: pd.DataFrame, side: str, turn: int, columns: list[str], filters: list = ()) -> pd.DataFrame:
    """The answered requests of a round → the conversations with their new message: a user turn
    (the last one becomes `question`) or an answer; a failed or unusable one, the row's reason.
    `filters`: the question filters every user turn must pass (`synth.filters.user_turn_filters`;
    the writer's finish reason as the question's `gen_finish_reason`)."""
    from synth.filters import apply_filters

    results = records(batch[[c for c in ("text", "error", "finish_reason") if c in batch.columns]])
    rows = records(restore(batch))
    for row, result in zip(rows, results):
        messages = parse_history(row["history"])
        if result["error"]:
            row[REJECT_COLUMN] = failure_reason(result["error"])
            continue
        if side == "user":
            parsed = parse_user_turn(result["text"])
            why = parsed.reason or (filters and apply_filters(filters, {
                **row, "question": parsed.items[0], "gen_finish_reason": result.get("finish_reason") or "stop"}))
            if why:
                row[REJECT_COLUMN] = f"dialogue_user_turn: {why} (turn {turn})"
            elif turn == int(row["turns"]):
                row["question"] = parsed.items[0]  # the last user turn: respond answers it
            else:
                row["history"] = history_json([*messages, {"role": "user", "content": parsed.items[0]}])
        else:
            answer = result["text"].strip()
            if not answer:
                row[REJECT_COLUMN] = f"dialogue_answer: empty_response (turn {turn})"
            else:
                row["history"] = history_json([*messages, {"role": "assistant", "content": answer}])
    return _typed(pd.DataFrame(rows, columns=columns))
