"""Filter and dedup stages, used on questions and on (question, response) pairs (the pair
filters in two passes, before and after annotate);
then decontamination against evaluation sets."""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa
import ray.data

from synth.config import PipelineConfig
from synth.dedup import mark_duplicates
from synth.engines.base import parse_history
from synth.dedup.decontaminate import (COLUMNS as CONTAMINATION_COLUMNS, ContaminationIndex, eval_set_identity,
                                       load_eval_sets, mark_contamination)
from synth.filters import CONTROVERSIAL_TIER, apply_filters, build_filters, diversions, reads_labels
from synth.obfuscation import PREFIX as OBFUSCATION
from synth.output_parsing import CONTROVERSIAL
from synth.rows import REJECT_COLUMN, records
from synth.stages.base import Stage, StageContext


class _FilterStage(Stage):
    """Apply the configured filters in order; a filter's Drop(reason, to="hard") goes to `<stage>/hard/`,
    Drop(reason, to="controversial") stays as label 有争议 with `controversy` = the reason.

    Which reasons go to a side output depends on the configured filters (`side_outputs`).
    """

    target: ClassVar[str]  # "questions" | "pairs": which list of `filters` in the config
    # None: every filter of the list; False / True: only those that do not / do read the
    # judges' output (`Filter.reads_labels`), the pair filters' two passes around annotate
    labels: ClassVar[bool | None] = None

    def _mine(self, name: str) -> bool:
        return self.labels is None or reads_labels(name) == self.labels

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        return {"filters": [f.model_dump(mode="json") for f in getattr(config.filters, self.target)
                            if self._mine(f.name)],
                # the label checks' default destination became the controversial tier (was hard/)
                **({"doubts": CONTROVERSIAL} if self.labels else {})}

    def _filters(self, config: PipelineConfig) -> list:
        # the whole list is built (so errors name its index in the config), this pass's part applied
        specs = getattr(config.filters, self.target)
        return [f for f in build_filters(specs, f"filters.{self.target}") if self._mine(f.name)]

    def side_outputs(self, config: PipelineConfig) -> dict[str, str]:
        # the controversial tier's rows stay in the stream, relabelled
        return {reason: side for reason, side in diversions(self._filters(config)).items()
                if side != CONTROVERSIAL_TIER}

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        filters = self._filters(ctx.config)
        tier = {reason for reason, side in diversions(filters).items() if side == CONTROVERSIAL_TIER}

        per_turn = not self.labels  # a filter that reads no label reads every turn of a conversation

        def check(batch: pd.DataFrame) -> pd.DataFrame:
            batch = batch.copy()
            reasons = pd.Series([filter_reason(filters, row, per_turn) for row in records(batch)],
                                index=batch.index, dtype=object)
            doubted = reasons.isin(tier)  # kept, relabelled: the controversial tier with the reason
            if doubted.any():
                batch.loc[doubted, "label"] = CONTROVERSIAL
                batch.loc[doubted, "controversy"] = reasons[doubted]
                reasons[doubted] = ""
            batch[REJECT_COLUMN] = reasons
            return batch

        return rows.map_batches(check, batch_format="pandas")


class FilterQuestions(_FilterStage):
    name = "filter_questions"
    keep = 0.80  # synth plan, without an earlier build
    reads = ("question",)
    target = "questions"


class FilterResponses(_FilterStage):
    """The pair filters that need no label (length, language, truncation, repetition,
    leakage, ...), before annotate: the judges see only the pairs these keep."""

    name = "filter_responses"
    keep = 0.92  # synth plan, without an earlier build
    reads = ("question", "response")
    target = "pairs"
    labels = False


class FilterPairs(_FilterStage):
    """The pair filters that read the judges' output (judge_verdicts, label_consistency,
    benign_flagged), after annotate."""

    name = "filter_pairs"
    keep = 0.90  # synth plan, without an earlier build
    reads = ("label",)
    target = "pairs"
    labels = True


def filter_reason(filters: list, row: dict[str, Any], per_turn: bool = False) -> str:
    """The first filter's drop reason for a row ("" = keep). `per_turn`: a conversation's
    earlier exchanges (`history`: user turn k as `question`, its answer as `response`) are
    checked too, after its last turn, the reason then naming the turn."""
    reason = apply_filters(filters, row)
    if reason or not per_turn:
        return reason
    history = parse_history(row.get("history"))
    for k in range(0, len(history) - 1, 2):
        exchange = {**row, "question": history[k]["content"], "response": history[k + 1]["content"],
                    "finish_reason": "stop"}  # an earlier answer's finish reason is not kept: only the text is checked
        reason = apply_filters(filters, exchange)
        if reason:
            return f"{reason} (turn {k // 2 + 1})"
    return ""


def conversation_text(batch: pd.DataFrame, fields: tuple[str, ...]) -> pd.Series:
    """What dedup compares per row: its `fields` joined by newlines, after the earlier turns of
    a conversation (`history`), so conversations are compared whole; a single question's text
    is its fields alone."""
    text = batch[list(fields)].astype(str).agg("\n".join, axis=1)
    if "history" in batch.columns:
        text = batch["history"].map(lambda h: "".join(f"{m['content']}\n" for m in parse_history(h))) + text
    return text


class _DedupStage(Stage):
    reject_only_columns = ("duplicate_of", "similarity")
    target: ClassVar[str]
    text_fields: ClassVar[tuple[str, ...]]

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        # what decides which rows are duplicates; batch_size, concurrency and executor are throughput
        return {"dedup": getattr(config.dedup, self.target).model_dump(
            mode="json", exclude={"batch_size", "concurrency", "executor"})}

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        config = getattr(ctx.config.dedup, self.target)
        if not config.enabled:
            return rows.map_batches(
                lambda b: b.assign(duplicate_of="", similarity=0.0, **{REJECT_COLUMN: ""}), batch_format="pandas"
            )
        # Compared: each row's text (`conversation_text`), obfuscated copies left out (one is made
        # from a question already unique and would match its own source: it is never compared,
        # and passes). Marked: every row, in one pass.
        compared = rows.map_batches(_compared_texts, batch_format="pandas", fn_kwargs={"fields": self.text_fields})
        marked = mark_duplicates(rows, DEDUP_TEXT, "id", config, compared=compared)
        # A removed row keeps its pointer to the kept representative in the rejects table.
        return marked.map_batches(_reason_as_reject, batch_format="pyarrow")


DEDUP_TEXT = "_dedup_text"


def _reason_as_reject(batch: pa.Table) -> pa.Table:
    kept = [c for c in batch.column_names if c not in ("reason", REJECT_COLUMN)]
    return batch.select(kept).append_column(REJECT_COLUMN, batch["reason"])


def _compared_texts(batch: pd.DataFrame, fields: tuple[str, ...]) -> pd.DataFrame:
    """The rows a dedup stage compares, as `id` and their text: all but obfuscated copies."""
    if "attack" in batch.columns:
        batch = batch[~batch["attack"].fillna("").astype(str).str.startswith(OBFUSCATION)]
    if batch.empty:
        return pd.DataFrame({"id": pd.Series([], dtype=object), DEDUP_TEXT: pd.Series([], dtype=object)})
    # ids as they are: the dedup steps turn them into strings (Arrow's cast) on both sides
    return pd.DataFrame({"id": batch["id"], DEDUP_TEXT: conversation_text(batch, fields)})


class DedupQuestions(_DedupStage):
    name = "dedup_questions"
    keep = 0.97  # synth plan, without an earlier build
    reads = ("id", "question")
    target = "questions"
    text_fields = ("question",)


class DedupPairs(_DedupStage):
    name = "dedup_pairs"
    keep = 0.99  # synth plan, without an earlier build
    reads = ("id", "question", "response")
    target = "pairs"
    text_fields = ("question", "response")


class Decontaminate(Stage):
    """Rows whose question (or question + response, `decontaminate.fields`) copies an item of an
    evaluation set go to rejects with reason `contaminated: <set>` (so the runner counts them per
    set), `contaminated_by` (the item's id) and `contamination_similarity`; see
    synth/dedup/decontaminate.py for what counts as a copy.

    Without evaluation sets (`decontaminate.against` empty, the default) every row passes
    through and the signature holds no config, so the settings of an unused section rerun nothing.
    An evaluation file counts by its content, not its path.
    """

    name = "decontaminate"
    reads = ("id", "question")
    reject_only_columns = CONTAMINATION_COLUMNS

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        d = config.decontaminate
        if not d.against:
            return {}
        return {"decontaminate": d.model_dump(mode="json", exclude={"against", "batch_size"}),
                "against": [eval_set_identity(spec, d.fields) for spec in d.against]}

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        d = ctx.config.decontaminate
        if not d.against:
            return rows.map_batches(
                lambda b: b.assign(contaminated_by="", contamination_similarity=0.0, **{REJECT_COLUMN: ""}),
                batch_format="pandas",
            )
        index = ContaminationIndex(load_eval_sets(d.against, d.fields), d)
        return mark_contamination(rows, d.fields, index, batch_size=d.batch_size, reason_column=REJECT_COLUMN)
