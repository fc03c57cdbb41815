"""respond → annotate: responders answer every question, two judges label every pair."""

from __future__ import annotations

import json
import random
from typing import Any

import pandas as pd
import ray.data

from synth.config import PipelineConfig, Role
from synth.engines import REQUEST_COLUMNS, RESULT_COLUMNS, request_row
from synth.engines.base import PENDING, failure_reason, parse_history, verdict_schema
from synth.output_parsing import (CONTROVERSIAL, FIELD_COLUMNS, FIELD_MALFORMED, FIELD_MISSING, SAFE, UNSAFE,
                                  field_column_value, ordered_fields, parse_verdict)
from synth.rows import (DIALOGUE_COLUMNS, DIALOGUE_DTYPES, REJECT_COLUMN, SINGLE_TURN, columns as _columns, records,
                        stable_id)
from synth.scoring import FROM_LABEL, TOP_LOGPROBS, combine, label_score, verdict_score
from synth.scoring import label as rule_label
from synth.stages.base import SAMPLE_QUESTION_CHARS, LLMStage, StageContext
from synth.stages.question_judge import QUESTION_JUDGE_COLUMNS, QUESTION_JUDGE_DTYPES

PAIR_COLUMNS = (
    "id", "question_id", "scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "elements",
    "attack", "template_id", "template_hash", "generator", "responder", "persona", "seed", "question",
    "response", "finish_reason", "response_tokens", "source_question_id", *QUESTION_JUDGE_COLUMNS,
    *DIALOGUE_COLUMNS, REJECT_COLUMN,
)
# The judge fields' columns (config `annotate.fields`) are always there, null when not asked for;
# question_harmful and judged_subcategory are the question judge's where it ran (synth/stages/question_judge.py).
# `controversy`: why a pair is in the controversial tier (label 有争议), "" for an agreed label.
# `unsafe_score`: the judges' combined score (synth.scoring; each judge's own is in `judgements`).
# `turn_labels` (JSON list, a label per answer) and `first_unsafe_turn` (the first answer labelled 不安全,
# 0: none): with annotate.every_turn; "" and null without it.
TURN_COLUMNS = ("turn_labels", "first_unsafe_turn")
LABELLED_COLUMNS = (*PAIR_COLUMNS[:-1], "judgements", "label", "analyze", "unsafe_score",
                    *(c for c in FIELD_COLUMNS.values() if c not in PAIR_COLUMNS), *TURN_COLUMNS, "controversy",
                    REJECT_COLUMN)
TURN_JUDGEMENTS = "_turn_judgements"  # between rounds: {turn: {judge index: judgement}} (JSON)
# Pair columns a judge request or its result would overwrite (the responder's `seed` and
# `finish_reason`): carried through the judges' requests under another name.
_CARRIED = {k: f"pair_{k}" for k in PAIR_COLUMNS if k in (*REQUEST_COLUMNS, *RESULT_COLUMNS)}


class Respond(LLMStage):
    """Every responder (or a deterministic subset per question) answers each question."""

    name = "respond"
    fans_out = True
    reads = ("id", "question")
    keep = 0.99  # pairs per question and responder (synth plan)
    columns = PAIR_COLUMNS

    def roles(self, config: PipelineConfig) -> list[Role]:
        return list(config.roles.responders)

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        return {"seed": config.seed, "respond": config.respond.model_dump(mode="json")}

    def templates(self, catalog) -> dict[str, str]:
        return {"templates/shared/respond": catalog.hashes["templates/shared/respond"]}

    def requests(self, ctx: StageContext, rows: ray.data.Dataset, round: int = 0
                 ) -> list[tuple[Role, ray.data.Dataset]]:
        responders = self.roles(ctx.config)
        names, per_question = [r.name for r in responders], ctx.config.respond.responders_per_question
        return [(role, rows.map_batches(respond_requests, batch_format="pandas", fn_kwargs={
            "catalog": ctx.catalog, "role": role, "style": ctx.prompt_style(role),
            "persona": ctx.catalog.persona(role.persona, index), "seed": ctx.config.seed,
            "responders": names, "per_question": per_question}))
            for index, role in enumerate(responders)]

    def results(self, ctx: StageContext, answered: ray.data.Dataset, rows: ray.data.Dataset, round: int = 0
                ) -> ray.data.Dataset:
        return answered.map_batches(pairs_from_results, batch_format="pandas")

    def estimate(self, planner) -> None:
        """Each question by every responder, or by responders_per_question of them."""

        config, catalog, options = planner.config, planner.catalog, planner.config.plan
        responders = self.roles(config)
        per_question = min(config.respond.responders_per_question or len(responders), len(responders))
        total = planner.rows * planner.rate(self.name, "requests", per_question)
        sample = pd.DataFrame([{"id": "plan", "question": "问" * SAMPLE_QUESTION_CHARS}])
        answer_chars = []
        for index, role in enumerate(responders):
            r = respond_requests(sample, catalog, role, config.models[role.model].prompt_style,
                                 catalog.persona(role.persona, index), config.seed, [role.name], None)
            planner.count(self.name, role, total / len(responders), float(len(r["prompt"][0]) + len(r["system"][0])))
            answer_chars.append(role.sampling.max_tokens * options.output_fill * options.chars_per_token)
        planner.notes["answer_chars"] = int(sum(answer_chars) / max(1, len(answer_chars)))  # for the judges' prompts
        planner.rows *= planner.rate(self.name, "keep", per_question * self.keep)
        planner.done(self.name)


def picked_responders(question_id: str, responders: list[str], per_question: int | None, seed: int) -> set[str]:
    """The responders that answer a question: all, or a deterministic subset of `per_question`."""
    if per_question is None or per_question >= len(responders):
        return set(responders)
    return set(random.Random(stable_id("respond", seed, question_id)).sample(responders, per_question))


def respond_requests(batch: pd.DataFrame, catalog, role: Role, style: str, persona, seed: int,
                     responders: list[str], per_question: int | None) -> pd.DataFrame:
    """One responder's request per question it is picked for; the question's columns travel with it."""
    out = []
    for row in records(batch):
        # a conversation's last turn is answered by the responder that answered its earlier turns
        picked = {row["history_responder"]} if row.get("history_responder") else \
            picked_responders(row["id"], responders, per_question, seed)
        if role.name not in picked:
            continue
        out.append({**carry(row), **respond_request(
            catalog, role, style, persona, seed, stable_id(row["id"], "respond", role.name), row["question"],
            parse_history(row.get("history"))), "question_id": row["id"], "persona": persona.id})
    return pd.DataFrame(out, columns=_columns([_CARRIED.get(c, c) for c in batch.columns], REQUEST_COLUMNS,
                                              ("question_id", "persona")))


def respond_request(catalog, role: Role, style: str, persona, seed: int, request_id: str, question: str,
                    history: list[dict[str, str]]) -> dict[str, Any]:
    """A responder's request to answer `question` after `history` (the conversation before it,
    [] for a single question), as its persona: chat style sends the history for the model's chat
    template; completion style writes it into respond.yaml's transcript."""
    rendered = catalog.render(catalog.respond, style, {"question": question, "persona": persona.model_dump(),
                                                       "history": history}, "respond")
    return request_row(request_id=request_id, task="respond", prompt=rendered.prompt, system=rendered.system,
                       role=role, base_seed=seed, history=history if style == "chat" else ())


def carry(row: dict[str, Any]) -> dict[str, Any]:
    """A row's columns renamed where a request or result column would overwrite them (`_CARRIED`)."""
    return {_CARRIED.get(k, k): v for k, v in row.items()}


def restore(batch: pd.DataFrame) -> pd.DataFrame:
    """`carry` undone: the request and result columns dropped, the row's own columns back."""
    restored = {carried: original for original, carried in _CARRIED.items()}
    drop = [c for c in (*REQUEST_COLUMNS, *RESULT_COLUMNS, "prompt_style") if c in batch.columns]
    return batch.drop(columns=drop).rename(columns=restored)


def pairs_from_results(batch: pd.DataFrame) -> pd.DataFrame:
    """The responders' answers → one pair per answer; a failed or empty answer is a reject."""
    out = []
    for row in records(batch):
        # a question row from before the converse stage is a one-turn conversation
        pair = {**SINGLE_TURN, **{k: row[_CARRIED.get(k, k)] for k in PAIR_COLUMNS if _CARRIED.get(k, k) in row}}
        failed = row["error"] or not row["text"].strip()
        pair.update(
            id=row["request_id"], responder=row["role"], seed=int(row["seed"]), response=row["text"].strip(),
            finish_reason=row["finish_reason"], response_tokens=int(row["completion_tokens"]),
            **{REJECT_COLUMN: (failure_reason(row["error"]) if row["error"] else "empty_response") if failed else ""},
        )
        out.append(pair)
    return pd.DataFrame(out, columns=list(PAIR_COLUMNS)).astype({**QUESTION_JUDGE_DTYPES, **DIALOGUE_DTYPES})


class Annotate(LLMStage):
    """Two judges score each pair; the rule (synth.scoring.label, thresholds from the config
    or its calibration record) labels it or puts it in the controversial tier.

    The judges run one after the other over the same rows, each adding its verdict
    columns (`_judge<i>`), and one vectorised pass combines them: a pair stays one row
    from start to end, so there is no per-pair shuffle.
    """

    name = "annotate"
    columns = LABELLED_COLUMNS
    reads = ("id", "question", "response")
    keep = 0.85

    def roles(self, config: PipelineConfig) -> list[Role]:
        return list(config.roles.judges)

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        from synth.calibration import effective_rule

        # `disagreement`: where a disagreement goes (the label 有争议 since the controversial tier;
        # before it, hard/): stage outputs of older builds are not reused as this one's.
        # `rule`: the thresholds (and the calibration record's hash) the labels come from.
        rule = effective_rule(config)
        rule["calibration"] = rule["calibration"] and rule["calibration"]["sha256"]
        return {**self.judge_depends(config), "rule": rule}

    def judge_depends(self, config: PipelineConfig) -> dict[str, Any]:
        """What the judges' verdicts and scores depend on (not the thresholds that label with them)."""
        fields = ordered_fields(config.annotate.fields)
        probes = {name: probe.sha256 for name, probe in judge_probes(config).items()}
        examples = judge_examples(config)
        shown = examples and {"sha256": examples[0].sha256, "k": examples[1].k, "max_chars": examples[1].max_chars}
        return {"seed": config.seed, "disagreement": CONTROVERSIAL, "scores": config.annotate.scores,
                **({"fields": fields} if fields else {}), **({"probes": probes} if probes else {}),
                **({"examples": shown} if shown else {}),
                **({"every_turn": earlier_turns(config)} if earlier_turns(config) else {})}

    def templates(self, catalog) -> dict[str, str]:
        return {"templates/shared/judge": catalog.hashes["templates/shared/judge"]}

    def templates_used(self, catalog, config: PipelineConfig) -> dict[str, str]:
        # conversations are judged with the dialogue judge (synth/stages/dialogue.py)
        dialogue_judge = "templates/shared/dialogue_judge"
        return {**self.templates(catalog), **({dialogue_judge: catalog.hashes.get(dialogue_judge, "")}
                                              if config.dialogues.share else {})}

    def rounds(self, config: PipelineConfig) -> int:
        # the judges one after another, each adding its columns; with annotate.every_turn, then
        # each judge again per earlier answer of the conversations (turn 1, 2, ...)
        return len(config.roles.judges) * (1 + earlier_turns(config))

    def reads_rows_twice(self, config: PipelineConfig) -> bool:
        return bool(earlier_turns(config))  # a turn's round passes the rows without that turn through

    def begin(self, ctx: StageContext, rows: ray.data.Dataset) -> ray.data.Dataset:
        if not earlier_turns(ctx.config):
            return rows
        return rows.map_batches(lambda batch: batch.assign(**{TURN_JUDGEMENTS: "{}"}), batch_format="pandas")

    def requests(self, ctx: StageContext, rows: ray.data.Dataset, round: int = 0
                 ) -> list[tuple[Role, ray.data.Dataset]]:
        from synth.probe import check_prompt, judge_prompt_fingerprint

        judges = self.roles(ctx.config)
        role, turn = judges[round % len(judges)], round // len(judges)
        probe = judge_probes(ctx.config).get(role.name)
        if probe is not None:
            check_prompt(probe, role.name, judge_prompt_fingerprint(ctx.catalog, role.rubric),
                         ctx.catalog.rubric(role.rubric).id)
        examples = judge_examples(ctx.config)
        return [(role, rows.map_batches(judge_requests, batch_format="pandas", fn_kwargs={
            "catalog": ctx.catalog, "role": role, "style": ctx.prompt_style(role), "seed": ctx.config.seed,
            "fields": ordered_fields(ctx.config.annotate.fields),
            "top_logprobs": 0 if ctx.config.annotate.scores == "off" or probe else TOP_LOGPROBS,
            "schema": probe is None, "examples": examples if probe is None else None, "turn": turn,
            "probe": probe is not None}))]

    def results(self, ctx: StageContext, answered: ray.data.Dataset, rows: ray.data.Dataset, round: int = 0
                ) -> ray.data.Dataset:
        judges = self.roles(ctx.config)
        index, turn = round % len(judges), round // len(judges)
        kwargs = {"index": index, "fields": ordered_fields(ctx.config.annotate.fields),
                  "subcategories": list(ctx.catalog.subcategories),
                  "require_scores": ctx.config.annotate.scores == "required",
                  "probe": judge_probes(ctx.config).get(judges[index].name)}
        if not turn:
            return answered.map_batches(record_judgement, fn_kwargs=kwargs, batch_format="pandas")
        written = answered.map_batches(record_judgement, fn_kwargs={**kwargs, "turn": turn}, batch_format="pandas")
        return written.union(rows.map_batches(without_turn, fn_kwargs={"turn": turn}, batch_format="pandas"))

    def finish(self, ctx: StageContext, rows: ray.data.Dataset) -> ray.data.Dataset:
        """One vectorised pass combines the judges' columns into the label (the build's rule)."""
        from synth.calibration import effective_rule

        return rows.map_batches(combine_judgements, fn_kwargs={
            "judges": len(self.roles(ctx.config)), "fields": ordered_fields(ctx.config.annotate.fields),
            "rule": effective_rule(ctx.config), "every_turn": bool(earlier_turns(ctx.config))},
            batch_format="pandas")

    def estimate(self, planner) -> None:
        """Every judge reads every pair (an answer of the responders' expected length), and with
        annotate.every_turn every earlier answer of the conversations too."""

        config = planner.config
        judges = self.roles(config)
        earlier = planner.notes.get("earlier_answers", 0.0) if earlier_turns(config) else 0.0
        total = planner.rows * planner.rate(self.name, "requests", len(judges) * (1 + earlier))
        pair = pd.DataFrame([{"id": "plan", "question": "问" * SAMPLE_QUESTION_CHARS,
                              "response": "答" * planner.notes.get("answer_chars", 0)}])
        for role in judges:  # a probe judge reads its short probe form
            r = judge_requests(pair, planner.catalog, role, config.models[role.model].prompt_style, config.seed,
                               ordered_fields(config.annotate.fields), probe=role.probe is not None)
            planner.count(self.name, role, total / len(judges), float(len(r["prompt"][0]) + len(r["system"][0])))
        planner.keep(self.name, self.keep)


def earlier_turns(config: PipelineConfig) -> int:
    """How many earlier answers a conversation can have for the judges to label (annotate.every_turn
    with dialogues on: the longest conversation's user turns - 1), else 0."""
    return config.dialogues.turns[1] - 1 if config.annotate.every_turn and config.dialogues.share else 0


def _labels_turn(row: dict[str, Any], turn: int) -> bool:
    """Whether a row has an earlier answer `turn` for the judges (turn 0: the last answer, every row)."""
    return not turn or (not row.get(REJECT_COLUMN) and int(row.get("turns") or 1) > turn)


def without_turn(batch: pd.DataFrame, turn: int) -> pd.DataFrame:
    """The rows that have no answer `turn` to label: through a turn's round untouched."""
    return batch[[not _labels_turn(row, turn) for row in records(batch)]]


def judge_probes(config: PipelineConfig) -> dict[str, Any]:
    """The probe of each probe judge (roles.judges[].probe), read and checked."""
    from synth.probe import read_probe

    return {role.name: read_probe(role.probe, f"roles.judges {role.name}: probe")
            for role in config.roles.judges if role.probe is not None}


def judge_examples(config: PipelineConfig):
    """(the examples file, its config) when `annotate.examples` is set, else None."""
    from synth.judge_examples import read_examples

    spec = config.annotate.examples
    return None if spec is None else (read_examples(spec.path, "annotate.examples.path"), spec)


def _judge_columns(index: int) -> str:
    return f"_judge{index}"


def judge_requests(batch: pd.DataFrame, catalog, role: Role, style: str, seed: int,
                   fields: list[str] = (), top_logprobs: int = TOP_LOGPROBS, schema: bool = True,
                   examples=None, turn: int = 0, probe: bool = False) -> pd.DataFrame:
    """One judge's request per pair; the pair's own columns travel with it (renamed where a
    request or result column would overwrite them). `fields`: the judge fields asked for;
    `top_logprobs`: alternatives per token to score the verdict with (0: none); `schema`:
    structured output (a probe judge's prompt is read, not answered: none); `examples`:
    (Examples, JudgeExamples) to show each request k of (synth.judge_examples), or None.
    `turn` >= 1 (annotate.every_turn): the conversation up to its answer `turn`, labelled, for
    each row that has one; 0: the last answer, every row. `probe`: a probe judge's request, read not
    answered: judge.yaml's `probe` form when the file has one (synth.probe.probe_prompt)."""
    from synth.judge_examples import pick
    from synth.probe import probe_prompt

    rubric = catalog.rubric(role.rubric).model_dump()
    field_vars = catalog.judge_fields(list(fields))
    schema = json.dumps(verdict_schema(fields, list(catalog.subcategories), role.analysis),
                        ensure_ascii=False) if schema else ""
    out = []
    for row in records(batch):
        if not _labels_turn(row, turn):
            continue
        shown = pick(examples[0], row, examples[1].k, seed, examples[1].max_chars) if examples else []
        history = parse_history(row.get("history"))
        messages = [*history, {"role": "user", "content": row["question"]},
                    {"role": "assistant", "content": row["response"]}]
        messages = messages[:2 * turn] if turn else messages  # or the conversation up to answer `turn`
        if probe and catalog.judge.probe is not None:
            rendered = probe_prompt(catalog, style, messages, rubric)
        elif history:  # a conversation: the dialogue judge reads all of it and labels the last answer
            rendered = catalog.dialogue.render_judge(catalog, style, {
                "messages": messages, "rubric": rubric, "fields": field_vars,
                "examples": [{"messages": [{"role": "user", "content": e["question"]},
                                           {"role": "assistant", "content": e["response"]}], "label": e["label"]}
                             for e in shown]})
        else:
            rendered = catalog.render(catalog.judge, style, {"question": row["question"], "response": row["response"],
                                                             "rubric": rubric, "fields": field_vars,
                                                             "examples": shown}, "judge")
        out.append({**carry(row), **request_row(
            request_id=stable_id(row["id"], "judge", role.name, *((turn,) if turn else ())), task="judge",
            prompt=rendered.prompt,
            system=rendered.system, role=role, base_seed=seed, json_schema=schema, top_logprobs=top_logprobs,
        ), "prompt_style": style})
    carried_columns = [_CARRIED.get(c, c) for c in batch.columns]
    return pd.DataFrame(out, columns=_columns(carried_columns, REQUEST_COLUMNS, "prompt_style"))


def record_judgement(batch: pd.DataFrame, index: int, fields: list[str] = (),
                     subcategories: list[str] = (), require_scores: bool = False, probe=None,
                     turn: int = 0) -> pd.DataFrame:
    """A judge's answers → one column `_judge<index>` of judgement dicts; the pair's columns restored.
    `require_scores` (annotate.scores: required): a verdict without log-probabilities stops the build.
    `probe` (synth.probe.Probe): a probe judge, whose answers are pooled states it scores.
    `turn` >= 1: the judgements of answer `turn`, into the row's `_turn_judgements` instead."""
    results = records(batch[["role", "error", "prompt", "prompt_style", "text", "logprobs"]])
    judgements = [_probe_judgement(r, probe, fields) if probe is not None else _judgement(r, fields, subcategories)
                  for r in results]
    unscored = next((j for j in judgements if j["verdict"] and j["score_source"] == FROM_LABEL), None) \
        if probe is None else None
    if require_scores and unscored is not None:
        from synth.errors import BadInput

        raise BadInput(f"judge {unscored['judge']!r}: its engine returned no log-probabilities at the verdict, "
                       "and annotate.scores is 'required' (use 'logprobs' to fall back to the label as the score)")
    out = restore(batch)
    if turn:
        out[TURN_JUDGEMENTS] = [json.dumps({**json.loads(recorded), str(turn): {
            **json.loads(recorded).get(str(turn), {}), str(index): judgement}}, ensure_ascii=False, default=_plain)
            for recorded, judgement in zip(out[TURN_JUDGEMENTS], judgements)]
        return out
    out[_judge_columns(index)] = judgements
    return out


def _plain(value: Any) -> Any:
    """A numpy scalar as JSON can hold it."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _outcome(judgements: list[dict[str, Any]], rule: dict[str, Any]) -> tuple[str, str, str, float | None]:
    """The judges' judgements of one answer through the build's rule: (label, controversy, reject
    reason, combined score); a failed judge gives no label and the reason (pending: sent again)."""
    failures = [j["error"] for j in judgements if j["error"]]
    pending = [f for f in failures if f.startswith(PENDING)]
    for j in judgements:  # a judgement recorded before scores existed: its label is its score
        if j["verdict"] and j.get("unsafe_score") is None:
            j["unsafe_score"], j["score_source"] = label_score(j["verdict"]), FROM_LABEL
    if pending:
        return "", "", pending[0], None
    if failures:
        field_failure = failures[0].startswith((FIELD_MISSING, FIELD_MALFORMED))
        return "", "", failures[0] if field_failure else f"judge_failed: {failures[0]}", None
    judge_scores = [float(j["unsafe_score"]) for j in judgements]
    weights = rule.get("weights")
    label, why = rule_label(judge_scores, rule["t_safe"], rule["t_unsafe"], rule["margin"], rule["combine"], weights,
                            rule.get("judges_agree", True))
    return label, why, "", combine(judge_scores, rule["combine"], weights)


def turn_outcomes(recorded: str, judges: int, turns: int, last_label: str, rule: dict[str, Any]
                  ) -> tuple[str, int | None, str]:
    """annotate.every_turn: a conversation's label per answer (its earlier answers' from
    `_turn_judgements`, the last its label) as JSON, the first answer labelled 不安全 (0: none;
    None when an answer before it has no label) and a pending reason when a judge of an earlier
    answer is to be asked again."""
    by_turn, labels = json.loads(recorded or "{}"), []
    for turn in range(1, turns):
        judgements = [dict(by_turn.get(str(turn), {}).get(str(i)) or {"error": f"{PENDING}: not judged"})
                      for i in range(judges)]
        for j in judgements:
            j.setdefault("verdict", "")
        label, _, reason, _ = _outcome(judgements, rule)
        if reason.startswith(PENDING):
            return "", None, reason
        labels.append(label)
    labels.append(last_label)
    first = next((i for i, label in enumerate(labels) if label in (UNSAFE, "")), None)
    if first is None:
        return json.dumps(labels, ensure_ascii=False), 0, ""
    return json.dumps(labels, ensure_ascii=False), first + 1 if labels[first] == UNSAFE else None, ""


def combine_judgements(batch: pd.DataFrame, judges: int, fields: list[str] = (),
                       rule: dict[str, Any] | None = None, every_turn: bool = False) -> pd.DataFrame:
    """The build's rule per pair: a failed judge → reject (a transient failure: pending, sent
    again next run; a missing or malformed judge field: a reject naming it); otherwise the
    judges' scores go through the labelling rule (synth.scoring.label with `rule`'s
    thresholds; default 0.5/0.5: both agree → the label, they disagree → 有争议): a label, or
    有争议 (the controversial tier) with `controversy` judges_disagree or
    score_between_thresholds, and no analysis of its own (each judge's verdict, score and
    analysis stay in `judgements`). `unsafe_score`: the combined score. Each judge field:
    its value where the judges agree, null where they disagree. `every_turn`: each earlier
    answer's judgements through the same rule (`turn_outcomes`)."""
    rule = rule or {"combine": "mean", "t_safe": 0.5, "t_unsafe": 0.5, "margin": None}
    columns = [_judge_columns(i) for i in range(judges)]
    labels, analyses, reasons, controversy, all_judgements, scores = [], [], [], [], [], []
    turn_labels, first_unsafe = [], []
    recorded = batch[TURN_JUDGEMENTS] if every_turn else [""] * len(batch)
    turns = batch["turns"] if "turns" in batch.columns else [1] * len(batch)
    for judgements, by_turn, n_turns in zip(zip(*(batch[c] for c in columns)), recorded, turns):
        judgements = [dict(j) for j in judgements]
        label, why, reason, score = _outcome(judgements, rule)
        per_turn, first = "", None
        if every_turn and label:
            per_turn, first, turn_reason = turn_outcomes(by_turn, judges, int(n_turns or 1), label, rule)
            if turn_reason:
                label, why, reason, score = "", "", turn_reason, None
        labels.append(label)
        scores.append(score)
        # a probe judge writes no analysis: the label's analysis is a generative judge's
        analyses.append(next((j["analysis"] for j in judgements if j["verdict"] == label and j["analysis"]), ""))
        controversy.append(why)
        reasons.append(reason)
        all_judgements.append(judgements)
        turn_labels.append(per_turn)
        first_unsafe.append(first)
    fields_out = combined_fields(all_judgements, fields)
    for column in QUESTION_JUDGE_COLUMNS:  # the question judge's verdict where it gave one, else the pair judges'
        if column in fields_out and column in batch.columns:
            fields_out[column] = [q if _given(q) else p for q, p in zip(batch[column].astype("object"),
                                                                        fields_out[column])]
    out = batch.drop(columns=[*columns, *([TURN_JUDGEMENTS] if every_turn else [])]).assign(
        judgements=all_judgements, label=labels, analyze=analyses,
        unsafe_score=pd.Series(scores, index=batch.index, dtype="float64"), controversy=controversy,
        turn_labels=turn_labels, first_unsafe_turn=pd.Series(first_unsafe, index=batch.index, dtype="object"),
        **fields_out).astype(FIELD_DTYPES)
    out[REJECT_COLUMN] = reasons
    return out[list(LABELLED_COLUMNS)]


def _given(value: Any) -> bool:
    """A verdict column holds a value (not null, NaN or empty)."""
    return value is not None and value is not pd.NA and value == value and value != ""


# Nullable types: a batch where no judge field has a value still writes bool and string columns.
FIELD_DTYPES = {"question_harmful": "boolean", "refusal": "boolean", "judged_subcategory": "string",
                "turn_labels": "string", "first_unsafe_turn": "Int64"}


def combined_fields(all_judgements: list[list[dict[str, Any]]], fields: list[str]) -> dict[str, list[Any]]:
    """Per judge-field column: the value the judges agree on, None where they disagree, where
    one failed, or when the field was not asked for."""
    columns: dict[str, list[Any]] = {column: [] for column in FIELD_COLUMNS.values()}
    for judgements in all_judgements:
        for name, column in FIELD_COLUMNS.items():
            values = {j.get(name, "") for j in judgements} if name in fields else {""}
            columns[column].append(field_column_value(name, values.pop()) if len(values) == 1 and "" not in values
                                   else None)
    return columns


def _probe_judgement(row: dict[str, Any], probe, fields: list[str] = ()) -> dict[str, Any]:
    """A probe judge's answer: the probe's P(不安全) of the pooled state, its side of 0.5 as the
    verdict; no analysis, no judge fields."""
    from synth.probe import FROM_PROBE, decode_vector

    blank = {name: "" for name in fields}
    vector = decode_vector(row["text"]) if not row["error"] else None
    if vector is None or len(vector) != len(probe.coef):
        error = failure_reason(row["error"]) if row["error"] else \
            f"probe_input: expected a pooled state of {len(probe.coef)} values from a task: embed model"
        return {"judge": row["role"], "verdict": "", "unsafe_score": float("nan"), "score_source": "",
                "analysis": "", "raw": "", "error": error, **blank}
    score = round(probe.score(vector), 6)
    return {"judge": row["role"], "verdict": UNSAFE if score > 0.5 else SAFE, "unsafe_score": score,
            "score_source": FROM_PROBE, "analysis": "", "raw": "", "error": "", **blank}


def _judgement(row: dict[str, Any], fields: list[str] = (), subcategories: list[str] = ()) -> dict[str, str]:
    """One judge's answer: its verdict, analysis, raw text, error and (when asked for) its fields."""
    blank = {name: "" for name in fields}
    if row["error"]:
        # NaN, not None: every judgement's score is a double, in every batch's parquet schema
        return {"judge": row["role"], "verdict": "", "unsafe_score": float("nan"), "score_source": "", "analysis": "",
                "raw": "", "error": failure_reason(row["error"]), **blank}
    # Completion-style judges are prompted with the opening of the JSON object and continue it.
    prompt = row["prompt"]
    prefix = prompt[prompt.rfind("{"):] if row["prompt_style"] == "completion" and "{" in prompt else ""
    verdict = parse_verdict(row["text"], fields=fields, subcategories=subcategories)
    if verdict.reason and prefix:
        verdict = parse_verdict(row["text"], prefix=prefix, fields=fields, subcategories=subcategories)
    score, source = verdict_score(verdict.label, row["text"], row.get("logprobs") or "", prefix) if verdict.label \
        else (float("nan"), "")
    return {"judge": row["role"], "verdict": verdict.label, "unsafe_score": score, "score_source": source,
            "analysis": verdict.analysis, "raw": row["text"], "error": verdict.reason, **blank, **verdict.fields}
