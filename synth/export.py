"""Exports of a finished build: corpus/, sft/, libra_test.jsonl, hard/, rejects/.

Everything is sorted by id and written from the stage outputs on disk, so the
same stage outputs always give byte-identical exports, and `synth export` can
redo this without rerunning a build.

Nothing on the driver grows with the corpus but a few short columns: balance and
the train/validation split are decided from `KEY_COLUMNS` alone (read columnar),
then the full rows are streamed in id order a chunk at a time (`synth.stream_io`)
into their files. A split of more than `SHARD_ROWS` rows is written as several
Hugging Face shards (`corpus/data/train-00000-of-00003.parquet`, ...).

The controversial tier (label 有争议: the judges disagreed, or the label checks doubt
an agreed label) is not balanced and never in `corpus/data/`: it is written twice,
relabelled, as `corpus/strict/` (不安全) and `corpus/loose/` (安全), so the dataset's
named configurations are `default` (agreed labels, the Libra corpus), `strict` and
`loose` (agreed + the tier counted one way); `hard/` keeps a copy of it, as written,
for stage-two annotation.

Every corpus row carries its conversation as `messages` (OpenAI chat form, `synth.rows.row_messages`:
the earlier turns of a dialogue row, then `question` and `response`; two messages for a
single-turn row) with `turns`, `strategy` and `history_responder` (issue 31; a build from before
the converse stage reads as single-turn). A fourth configuration, `dialogues` (`corpus/dialogues/`),
holds the agreed rows of two user turns or more, in the split the default configuration has them;
libra_test.jsonl, Libra-Test's single-turn format, leaves them out.

People's labels (`<build>/reviews/`, `synth review pull`; synth/human_labels.py) are applied to
every row as it is read: their majority label over the judges' (a tie stays 有争议), so a tier row
people settled joins the corpus and an agreed row they left 有争议 joins the tier; every corpus row
carries `label_source` (judges | human | judges+human-agreed); balance never cuts a row people
labelled; and a fifth configuration, `reviewed` (`corpus/reviewed/`), holds the corpus rows whose
label people gave or confirmed, in the split the default configuration has them. Without
reviews every row's `label_source` is `judges` and nothing else changes.

A build also records what its exports read besides the stage outputs, in
`<build>/inputs/`: `config.yaml` (the validated config, templates/seeds paths made
absolute), `judge.yaml` (a copy of the guard prompt the sft/ view renders) and, where the
templates have one, `dialogue_judge.yaml` (the guard prompt of a dialogue row).
`synth export` reads only the build directory, so a build can be moved, and
re-exported after templates/ changed, with the prompt its judges saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from synth.balance import apply_balance
from synth.config import PipelineConfig, load_config
from synth.dialogue_templates import DIALOGUE_JUDGE_FILE
from synth.errors import BadInput
from synth.human_labels import (AGREED, HUMAN, JUDGES, LABEL_SOURCES, PEOPLE_UNDECIDED, REVIEW_STAGE, REVIEWS_DIR,
                                apply_people, people_by_row, settle)
from synth.output_parsing import CONTROVERSIAL, FIELD_COLUMNS, SAFE, UNSAFE
from synth.report.collect import CONTENT_KEYS, coverage_by_content
from synth.rows import MESSAGES_TYPE, REJECT_COLUMN, row_messages, stable_id
from synth.scoring import BETWEEN, DISAGREE
from synth.stages.question_judge import QUESTION_JUDGEMENTS_TYPE
from synth.stream_io import (SortedRows, batches, conform, parquet_files, read_column, shard_paths, unified_schema,
                             with_ids, write_jsonl, write_parquet)

CORPUS_COLUMNS = (
    "id", "scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "attack", "question",
    "response", "messages", "turns", "strategy", "history_responder", "responder", "persona", "label", "label_source",
    "analyze", "unsafe_score", "judgements", "elements", "generator",
    "template_id", "template_hash", "finish_reason", "seed", "source_question_id", *FIELD_COLUMNS.values(),
    "controversy", "turn_labels", "first_unsafe_turn", "question_score", "requested_kind", "requested_subcategory",
    "question_route",
)
# The judge fields' and the question judge's columns keep their types when no row has a value
# (question_harmful and judged_subcategory: the question judge's where it ran, synth/stages/question_judge.py).
FIELD_TYPES = {"question_harmful": pa.bool_(), "refusal": pa.bool_(), "judged_subcategory": pa.large_string(),
               "question_score": pa.float64(), "requested_kind": pa.large_string(),
               "requested_subcategory": pa.large_string(), "question_route": pa.large_string(),
               # annotate.every_turn (a label per answer, the first 不安全 one); "" and null without it
               "turn_labels": pa.large_string(), "first_unsafe_turn": pa.int64(),
               "question_judgements": QUESTION_JUDGEMENTS_TYPE}
# The conversation columns every corpus file has, whatever the final stage wrote: `messages` is made
# from the row (`row_messages`); turns, strategy, history_responder are the converse stage's
# (issue 31), 1 / "" / "" on a single-turn row and on every row of a build from before it.
DIALOGUE_TYPES = {"messages": MESSAGES_TYPE, "turns": pa.int64(), "strategy": pa.large_string(),
                  "history_responder": pa.large_string()}
DIALOGUE_DEFAULTS = {"turns": 1, "strategy": "", "history_responder": ""}
# Made by the export, not a stage: where a row's label comes from (synth.human_labels.settle).
MADE_TYPES = {**DIALOGUE_TYPES, "label_source": pa.large_string()}
# What the corpus rows are made from: CORPUS_COLUMNS as the final stage wrote them (not `messages`
# nor `label_source`), and the earlier turns of a dialogue row (`history`, JSON: synth.engines.base.parse_history).
STAGE_COLUMNS = (*(c for c in CORPUS_COLUMNS if c not in ("messages", "label_source")), "history")
DIALOGUES = "dialogues"  # the configuration (and corpus/ folder) of the agreed rows with turns >= 2
REVIEWED = "reviewed"  # the configuration (and corpus/ folder) of the corpus rows whose label people gave or confirmed
# What balance, the split, the counts and the dataset card read: the only columns held whole
# (the card's coverage by content also reads the request and the question judge's verdicts).
KEY_COLUMNS = ("id", "scenario", "scenario_name", "subcategory", "label", "kind", "controversy", "turns",
               *CONTENT_KEYS)
# The named configurations beside `default`: the controversial tier counted as this label.
VIEWS = {"strict": UNSAFE, "loose": SAFE}
FINGERPRINT_COLUMNS = ("id", "label", "question", "response", "messages", "analyze")  # the stage a tier row got its label in (else filter_pairs)
SHARD_ROWS = 50_000  # rows per corpus/ parquet file at most
LIBRA_KEYS = ("source", "category_name", "sub_category_name", "question", "response", "label", "analyze", "id")
# Beyond Libra-Test's keys: the judges' combined P(不安全) (synth.scoring), null in builds before scores.
LIBRA_EXTRA_KEYS = ("unsafe_score",)
LIBRA_SOURCE = "Synthetic Data"
INPUTS_DIR = "inputs"
JUDGE_FIELDS_FILE = "judge_fields.json"  # in inputs/: the judge fields the build asked for, as the prompt renders them
EXPORT_FORMATS = ("sft", "alpaca", "libra-test", "jsonl")
SPLITS = ("train", "validation")

CONTENT_WARNING = (
    "**Content warning.** This dataset contains machine-written questions that request harmful, "
    "illegal, hateful or dangerous content, and model answers that may comply with them. It exists "
    "to train and evaluate safety classifiers. Do not use it to train a model to produce such content."
)


def read_table_glob(path: Path, pattern: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Every file matching `pattern` in `path` as one frame; only `columns` (those a file has) when given."""
    files = sorted(Path(path).glob(pattern))
    if not files:
        return pd.DataFrame()
    tables = []
    for f in files:
        names = None if columns is None else [c for c in columns if c in pq.read_schema(f).names]
        tables.append(pq.read_table(f, columns=names))
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def read_table(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    return read_table_glob(path, "*.parquet", columns)


def split_train_validation(df: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified by scenario × label; deterministic (a hash order per stratum)."""
    if df.empty or share == 0:
        return df, df.iloc[0:0]
    order = df["id"].map(lambda i: stable_id("split", seed, i))
    df = df.assign(_order=order).sort_values(["scenario", "label", "_order"])
    validation_index = []
    for _, group in df.groupby(["scenario", "label"], sort=True):
        n = len(group)
        take = round(n * share)
        if take == 0 and n >= 2:
            take = 1  # every stratum with two rows or more appears in validation
        validation_index.extend(group.index[:take])
    validation = df.loc[validation_index]
    train = df.drop(index=validation_index)
    return (train.drop(columns="_order").sort_values("id"), validation.drop(columns="_order").sort_values("id"))


def final_stage(out: Path) -> str:
    """The stage whose rows the exports read: the last of the build's manifest (a re-export), else
    the last of synth's pipeline (a build exporting before its manifest is written)."""
    try:
        return json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))["stages"][-1]["name"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        from synth.pipeline import PIPELINE

        return PIPELINE.final.name


def tier_stages() -> tuple[str, str]:
    """(the stage whose judges' rule puts a pair in the controversial tier, the stage whose label
    filters do): what hard/ names as a tier row's `hard_stage`."""
    from synth.pipeline import PIPELINE

    labeller = PIPELINE.writer_of("judgements").name
    filters = next((s.name for s in PIPELINE if getattr(s, "labels", None) is True), labeller)
    return labeller, filters


def load_balanced(out: Path, config: PipelineConfig, final: str | None = None, people: dict[str, str] | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """(kept, cut by `balance` with `reject_reason`, balance counts, the controversial tier):
    `KEY_COLUMNS` of the final stage's rows with `label_source`, sorted by id. `people`: row id ->
    people's label (synth.human_labels), settled in first. Balance applies to the agreed labels and
    never cuts a row whose label people gave or confirmed; the tier is kept whole."""
    keys = read_table(Path(out) / "stages" / (final or final_stage(out)) / "rows", KEY_COLUMNS)
    if keys.empty:
        keys = pd.DataFrame(columns=list(KEY_COLUMNS))
    if "controversy" not in keys:  # a build of an older synth: no tier
        keys["controversy"] = ""
    # a build from before the converse stage: single-turn rows
    keys["turns"] = keys["turns"].fillna(DIALOGUE_DEFAULTS["turns"]).astype("int64") if "turns" in keys \
        else DIALOGUE_DEFAULTS["turns"]
    keys = keys.assign(controversy=keys["controversy"].fillna(""))
    keys = apply_people(keys.sort_values("id").reset_index(drop=True), people or {})
    tier = keys["label"] == CONTROVERSIAL
    reviewed = keys.loc[~tier & (keys["label_source"] != JUDGES), "id"]
    kept, cut, counts = apply_balance(keys[~tier].reset_index(drop=True), config.balance, config.seed, pinned=set(reviewed))
    return kept, cut, counts, keys[tier].reset_index(drop=True)


def export_build(out: Path, config: PipelineConfig, catalog: Any = None, *,
                 shard_rows: int = SHARD_ROWS, judges_measured: dict[str, Any] | None = None,
                 final: str | None = None) -> dict[str, Any]:
    """Write every export. `catalog` (the build's templates) gives the guard prompt for sft/;
    without it the prompt is the judge template next to the config (see `snapshot_inputs`).
    A corpus split of more than `shard_rows` rows is written as several files.
    `judges_measured`: the last `eval-judges` record of these judges, for the card.
    `final`: the stage whose rows are the corpus (default: `final_stage`)."""
    from synth.sft import GuardPrompt, write_sft

    out = Path(out)
    final_name = final or final_stage(out)
    people = people_by_row(out / REVIEWS_DIR)  # row id -> people's label (synth review pull), applied throughout
    kept, cut, balance, tier = load_balanced(out, config, final_name, people)
    balance["config"] = config.balance.model_dump(mode="json")
    train, validation = split_train_validation(kept, config.export.validation_share, config.seed)
    tier_splits = dict(zip(SPLITS, split_train_validation(tier, config.export.validation_share, config.seed)))

    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        files = parquet_files(out / "stages" / final_name / "rows")
        stage_schema = unified_schema(files, STAGE_COLUMNS)
        schema = corpus_schema(stage_schema)
        final = SortedRows((corpus_batch(b, schema, people) for b in batches(files, stage_schema)),
                           read_column(files, "id"), schema, Path(tmp) / final_name)

        corpus_dir = _fresh_dir(out / "corpus")
        for split, rows in (("train", train), ("validation", validation)):
            write_parquet(shard_paths(corpus_dir / "data", split, len(rows), shard_rows), schema,
                          with_ids(final, rows["id"]), shard_rows)
            # the same rows, in the same split; datasets loads no split without rows: a split (config)
            # with none is left out
            for view, ids in ((DIALOGUES, rows.loc[rows["turns"] >= 2, "id"]),
                              (REVIEWED, rows.loc[rows["label_source"] != JUDGES, "id"])):
                if len(ids):
                    write_parquet(shard_paths(corpus_dir / view, split, len(ids), shard_rows), schema,
                                  with_ids(final, ids), shard_rows)
        for view, label in VIEWS.items():
            for split, rows in tier_splits.items():
                write_parquet(shard_paths(corpus_dir / view, split, len(rows), shard_rows), schema,
                              relabelled(with_ids(final, rows["id"]), label), shard_rows)
        write_jsonl(out / "libra_test.jsonl", (row for t in with_ids(final, kept["id"]) for row in libra_rows(t)))

        hard_rows, hard_reasons = write_hard(out, _fresh_dir(out / "hard") / "hard.parquet", Path(tmp) / "hard",
                                             tier=(schema, lambda: with_ids(final, tier["id"]), tier["id"]))

        rejects_dir = _fresh_dir(out / "rejects")
        reject_counts = {}
        for stage_dir in sorted((out / "stages").iterdir()):
            reject_counts[stage_dir.name] = write_sorted(parquet_files(stage_dir / "rejects"),
                                                         rejects_dir / f"{stage_dir.name}.parquet",
                                                         Path(tmp) / f"rejects-{stage_dir.name}")
        cut_fields = [pa.field(REJECT_COLUMN, pa.string()), pa.field("stage", pa.string())]
        cut_schema = _as_written(pa.schema([*schema, *cut_fields]))
        reject_counts["balance"] = write_parquet([rejects_dir / "balance.parquet"], cut_schema,
                                                 _with_cut_reason(with_ids(final, cut["id"]), cut))

        counts = {
            "corpus_rows": len(kept),
            "train_rows": len(train),
            "validation_rows": len(validation),
            "hard_rows": hard_rows,
            "hard_reasons": hard_reasons,
            "balance": balance,
            "rejects": reject_counts,
            "labels": {k: int(v) for k, v in kept["label"].value_counts().sort_index().items()} if len(kept) else {},
            "controversial": {
                "rows": len(tier), **{split: len(rows) for split, rows in tier_splits.items()},
                "by_reason": {str(k): int(v) for k, v in tier["controversy"].value_counts().sort_index().items()},
                "views": {view: f"corpus/{view}/ (有争议 counted {label})" for view, label in VIEWS.items()}},
            "kinds": {k: int(v) for k, v in kept["kind"].value_counts().sort_index().items()} if len(kept) else {},
            # the agreed rows of two user turns or more: config `dialogues`, left out of libra_test.jsonl
            DIALOGUES: {"rows": int((kept["turns"] >= 2).sum()), "train": int((train["turns"] >= 2).sum()),
                        "validation": int((validation["turns"] >= 2).sum())},
            "scenarios": int(kept["scenario"].nunique()) if len(kept) else 0,
            "subcategories": int(kept[["scenario", "subcategory"]].drop_duplicates().shape[0]) if len(kept) else 0,
            REVIEWED: reviewed_counts(kept, cut, train, validation, tier, people),
        }
        content = coverage_by_content(out, kept)  # None: no question judge ran
        if content is not None:
            counts["coverage"] = {k: v for k, v in content.items() if k != "by_subcategory"}
        _write_card(corpus_dir / "README.md", config, kept, counts, judges_measured)

        prompt = GuardPrompt.from_file(snapshot_inputs(out, config, catalog), recorded_dialogue_judge(out))
        if config.export.sft_target == "extended":
            prompt.fields = json.loads((out / INPUTS_DIR / JUDGE_FIELDS_FILE).read_text(encoding="utf-8"))
        counts["sft"] = write_sft(out / "sft", {"train": with_ids(final, train["id"]),
                                                "validation": with_ids(final, validation["id"])},
                                  prompt, label_position=config.export.label_position, name=config.name)
    return counts


def corpus_schema(stage: pa.Schema) -> pa.Schema:
    """The corpus files' schema from the final stage's (`STAGE_COLUMNS`): CORPUS_COLUMNS in order,
    strings as written, the conversation columns of one fixed type in every file (also an empty one)."""
    if not stage.names:
        return stage
    written = _as_written(stage)
    return pa.schema([pa.field(c, MADE_TYPES[c]) if c in MADE_TYPES else written.field(c)
                      for c in CORPUS_COLUMNS if c in MADE_TYPES or c in written.names])


def reviewed_counts(kept: pd.DataFrame, cut: pd.DataFrame, train: pd.DataFrame, validation: pd.DataFrame,
                    tier: pd.DataFrame, people: dict[str, str]) -> dict[str, Any]:
    """What people's labels did to this export: the `reviewed` configuration's rows (corpus rows whose
    label people gave or confirmed) per split; the corpus rows per `label_source`; the rows people
    labelled; the controversial tier's rows they settled (now in the corpus); the agreed labels they
    changed; the agreed rows they left 有争议 (now in the tier); and the labelled rows that are not the
    final stage's (what a filter diverted to hard/ before it: in the agreement figures, not the corpus)."""
    sources = kept["label_source"].value_counts()
    by_people = kept["label_source"] == HUMAN
    return {"rows": int((kept["label_source"] != JUDGES).sum()),
            **{split: int((rows["label_source"] != JUDGES).sum()) for split, rows in (("train", train),
                                                                                    ("validation", validation))},
            "label_source": {source: int(sources.get(source, 0)) for source in LABEL_SOURCES},
            "people_labelled": len(people),
            "settled_from_tier": int((by_people & (kept["judges_label"] == CONTROVERSIAL)).sum()),
            "relabelled": int((by_people & (kept["judges_label"] != CONTROVERSIAL)).sum()),
            "moved_to_tier": int((tier["controversy"] == PEOPLE_UNDECIDED).sum()),
            "not_in_final_stage": len(set(people) - set(kept["id"]) - set(cut["id"]) - set(tier["id"]))}


def corpus_batch(batch: pa.RecordBatch, schema: pa.Schema, people: dict[str, str] | None = None) -> pa.RecordBatch:
    """Final-stage rows as corpus rows of `schema`: `messages` made from each row (`row_messages`),
    turns / strategy / history_responder defaulted where a row has none (single-turn), and the label
    settled with `people`'s labels (row id -> label; synth.human_labels.settle) and its `label_source`."""
    messages = []
    for row in batch.select([c for c in ("id", "question", "response", "history") if c in batch.schema.names]).to_pylist():
        try:
            messages.append(row_messages(row))
        except ValueError as e:  # a history that is not a conversation
            raise BadInput(f"row {row.get('id')}: {e}") from None
    ids, labels = batch.column("id").to_pylist(), batch.column("label").to_pylist()
    controversy = batch.column("controversy").to_pylist() if "controversy" in batch.schema.names else [""] * len(ids)
    settled = [settle(label, reason or "", (people or {}).get(row_id))
               for row_id, label, reason in zip(ids, labels, controversy)]
    columns = {"messages": pa.array(messages, MESSAGES_TYPE),
               "label": pa.array([s[0] for s in settled], pa.large_string()),
               "label_source": pa.array([s[1] for s in settled], pa.large_string()),
               "controversy": pa.array([s[2] for s in settled], pa.large_string())}
    for name, default in DIALOGUE_DEFAULTS.items():
        values = batch.column(name).cast(DIALOGUE_TYPES[name]) if name in batch.schema.names \
            else pa.nulls(len(batch), DIALOGUE_TYPES[name])
        columns[name] = values.fill_null(pa.scalar(default, DIALOGUE_TYPES[name]))
    names = [n for n in batch.schema.names if n not in columns]
    return conform(pa.RecordBatch.from_arrays([*(batch.column(n) for n in names), *columns.values()],
                                              names=[*names, *columns]), schema)


def _as_written(schema: pa.Schema) -> pa.Schema:
    """Top-level strings as large_string: the type these files had when they went through pandas."""
    return pa.schema([f.with_type(pa.large_string()) if f.type == pa.string()
                      else f.with_type(FIELD_TYPES[f.name]) if f.type == pa.null() and f.name in FIELD_TYPES else f
                      for f in schema])


def _with_cut_reason(tables: Iterable[pa.Table], cut: pd.DataFrame) -> Iterator[pa.Table]:
    """Rows cut by balance with their `reject_reason` and `stage` = balance."""
    ids, reasons = pa.array(cut["id"], type=pa.string()), pa.array(cut[REJECT_COLUMN], type=pa.string())
    for table in tables:
        reason = reasons.take(pc.index_in(table.column("id"), value_set=ids))
        yield table.append_column(REJECT_COLUMN, reason).append_column("stage", pa.array(["balance"] * len(table)))


def write_sorted(files: Sequence[Path], path: Path, tmp: Path) -> int:
    """The rows of `files` as one parquet file sorted by id (no columns when there are no files)."""
    if not files:
        return write_parquet([path], pa.schema([]), [])
    schema = _as_written(unified_schema(files))
    return write_parquet([path], schema, SortedRows(batches(files, schema), read_column(files, "id"), schema, tmp))


def write_hard(out: Path, path: Path, tmp: Path, tier: tuple[pa.Schema, Any, Any] | None = None
               ) -> tuple[int, dict[str, int]]:
    """Every stage's hard pool (`stages/*/hard/`) as one file with `hard_reason` (the stage's
    `reject_reason`) and `hard_stage`, sorted by id and stage; (rows, rows per hard_reason).
    `tier`: (schema, a function giving its tables, ids) of the controversial tier's rows, copied
    in with `hard_reason` = their `controversy` and `hard_stage` the stage that labelled them."""
    stages = [(d.name, parquet_files(d / "hard")) for d in sorted((Path(out) / "stages").iterdir()) if d.is_dir()]
    stages = [(name, files) for name, files in stages if files]
    tier_schema, tier_tables, tier_ids = tier if tier is not None and len(tier[2]) else (None, None, [])
    if not stages and tier_schema is None:
        write_parquet([path], pa.schema([]), [])
        return 0, {}
    schemas = {name: unified_schema(files) for name, files in stages}
    hard_schemas = [_as_hard(s) for s in schemas.values()] + ([_as_hard(tier_schema)] if tier_schema else [])
    schema = _as_written(pa.unify_schemas(hard_schemas, promote_options="default"))
    ids = pa.chunked_array([*read_column([f for _, files in stages for f in files], "id").cast(pa.string()).chunks,
                            pa.array(list(tier_ids), pa.string())], type=pa.string())

    def as_hard(batch: pa.RecordBatch, reason: pa.Array, stage: str | list[str]) -> pa.RecordBatch:
        kept = [n for n in batch.schema.names if n != REJECT_COLUMN]
        stages = stage if isinstance(stage, list) else [stage] * len(batch)
        hard = pa.RecordBatch.from_arrays([*(batch.column(n) for n in kept), reason, pa.array(stages, pa.string())],
                                          names=[*kept, "hard_reason", "hard_stage"])
        return conform(hard, schema)

    def rows() -> Iterator[pa.RecordBatch]:
        for name, files in stages:
            for batch in batches(files, schemas[name]):
                reason = batch.column(REJECT_COLUMN) if REJECT_COLUMN in batch.schema.names \
                    else pa.array([""] * len(batch), pa.string())
                yield as_hard(batch, reason, name)
        labeller, label_filters = tier_stages()
        for table in tier_tables() if tier_schema is not None else ():
            for batch in table.to_batches():
                reason = batch.column("controversy")
                # the judges' rule (a disagreement, a score between the thresholds), people who left an
                # agreed label undecided, else a label filter
                yield as_hard(batch, reason, [labeller if r in (DISAGREE, BETWEEN) else REVIEW_STAGE
                                              if r == PEOPLE_UNDECIDED else label_filters for r in reason.to_pylist()])

    sorted_rows = SortedRows(rows(), ids, schema, tmp, sort_keys=("id", "hard_stage"))
    n = write_parquet([path], schema, sorted_rows)
    reasons = pq.read_table(path, columns=["hard_reason"]).column("hard_reason").drop_null()
    return n, {str(r["values"]): int(r["counts"]) for r in sorted(pc.value_counts(reasons).to_pylist(),
                                                                  key=lambda r: r["values"])}


def _as_hard(schema: pa.Schema) -> pa.Schema:
    fields = [f for f in schema if f.name != REJECT_COLUMN]
    return pa.schema([*fields, pa.field("hard_reason", pa.string()), pa.field("hard_stage", pa.string())])


def relabelled(tables: Iterable[pa.Table], label: str) -> Iterator[pa.Table]:
    """The tables with every `label` set to `label` (the controversial tier in a strict or loose view)."""
    for table in tables:
        index = table.schema.get_field_index("label")
        yield table.set_column(index, table.schema.field(index), pa.array([label] * len(table),
                                                                          table.schema.field(index).type))


def libra_rows(corpus: pa.Table) -> list[dict[str, Any]]:
    """Libra-Test's rows of the single-turn corpus rows (its format has one question and one answer:
    a dialogue row, `turns` >= 2, is left out; a corpus without `turns` is single-turn)."""
    if "turns" in corpus.column_names:
        corpus = corpus.filter(pc.fill_null(pc.less(corpus.column("turns"), 2), True))
    columns = ["scenario_name", "subcategory_name", "question", "response", "label", "analyze", "id"]
    scores = corpus.column("unsafe_score").to_pylist() if "unsafe_score" in corpus.column_names \
        else [None] * corpus.num_rows
    return [
        {"source": LIBRA_SOURCE, "category_name": r["scenario_name"], "sub_category_name": r["subcategory_name"],
         "question": r["question"], "response": r["response"], "label": r["label"], "analyze": r["analyze"],
         "id": r["id"], "unsafe_score": round(float(score), 6) if isinstance(score, (int, float)) and score == score
         else None}
        for r, score in zip(corpus.select(columns).to_pylist(), scores)
    ]


def recorded_dialogue_judge(out: Path) -> Path | None:
    """The dialogue judge template recorded in `<out>/inputs/` (the guard prompt of a dialogue row);
    None where the build's templates had none."""
    path = Path(out) / INPUTS_DIR / DIALOGUE_JUDGE_FILE
    return path if path.exists() else None


def snapshot_inputs(out: Path, config: PipelineConfig, catalog: Any = None) -> Path:
    """Record in `<out>/inputs/` the config and the judge templates this build's exports use
    (judge.yaml, and dialogue_judge.yaml where the templates have it).

    The judges come from `catalog` when given, else from the config's templates dir.
    A config loaded from `<out>/inputs/` (a re-export) leaves the record as it is.
    Returns the path of the recorded judge template (`recorded_dialogue_judge` gives the other).
    """
    inputs = Path(out) / INPUTS_DIR
    judge_copy = inputs / "judge.yaml"
    if config.source is not None and config.source.parent == inputs.resolve():
        return judge_copy
    inputs.mkdir(parents=True, exist_ok=True)
    if config.annotate.fields and (catalog is not None or config.templates_dir is not None):
        # what the extended sft target's prompt asks for (with the subcategory choices)
        from synth.templates import load_catalog

        fields_from = catalog if catalog is not None else load_catalog(config.templates_dir, config.seeds_dir)
        (inputs / JUDGE_FIELDS_FILE).write_text(json.dumps(fields_from.judge_fields(config.annotate.fields),
                                                           ensure_ascii=False, indent=1), encoding="utf-8")
    dialogue_text = None
    if catalog is not None:
        text = ("# The guard prompt this build's judges used (synth dumps it from the build's templates).\n"
                + yaml.safe_dump(catalog.judge.model_dump(), allow_unicode=True, sort_keys=False, width=1000))
        dialogue_judge = catalog.dialogue.judge if catalog.dialogue is not None else None
        if dialogue_judge is not None:
            dialogue_text = ("# The guard prompt of a dialogue row this build's judges used (synth dumps it from "
                             "the build's templates).\n" + yaml.safe_dump(dialogue_judge.model_dump(), allow_unicode=True,
                                                                          sort_keys=False, width=1000))
    elif config.templates_dir is not None:
        source = config.templates_dir / "shared" / "judge.yaml"
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as e:
            raise BadInput(f"{source}: cannot read the judge template: {e.strerror}") from None
        dialogue_source = config.templates_dir / "shared" / DIALOGUE_JUDGE_FILE
        try:
            dialogue_text = dialogue_source.read_text(encoding="utf-8") if dialogue_source.exists() else None
        except OSError as e:
            raise BadInput(f"{dialogue_source}: cannot read the dialogue judge template: {e.strerror}") from None
    elif judge_copy.exists():
        return judge_copy
    else:
        raise BadInput(f"{out}: no judge template: load the config with load_config, or pass the catalog")
    data = config.model_dump(mode="json")
    if config.templates_dir is not None:
        data["templates"], data["seeds"] = str(config.templates_dir), str(config.seeds_dir)
    _write_text(inputs / "config.yaml",
                "# The config this build ran with (validated; synth export reads it).\n"
                + yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    _write_text(judge_copy, text)
    if dialogue_text is not None:
        _write_text(inputs / DIALOGUE_JUDGE_FILE, dialogue_text)
    else:  # not one recorded by an earlier run with other templates
        (inputs / DIALOGUE_JUDGE_FILE).unlink(missing_ok=True)
    return judge_copy


# -- re-export of a finished build (`synth export`) ---------------------------------------


@dataclass
class FinishedBuild:
    """What a re-export needs from a finished build; the rows come from its corpus/."""

    path: Path
    name: str
    label_position: str
    judge: Path  # the guard prompt template the sft views render
    sft_target: str = "libra"
    dialogue_judge: Path | None = None  # the guard prompt template of a dialogue row, where there is one

    def guard_prompt(self, target: str | None = None) -> Any:
        """The sft views' prompt; the extended target asks for the judge fields the build recorded."""
        from synth.sft import SFT_TARGETS, GuardPrompt

        target = target or self.sft_target
        if target not in SFT_TARGETS:
            raise BadInput(f"--sft-target must be one of {', '.join(SFT_TARGETS)}, got {target!r}")
        prompt = GuardPrompt.from_file(self.judge, self.dialogue_judge)
        if target == "extended":
            recorded = self.path / INPUTS_DIR / JUDGE_FIELDS_FILE
            if not recorded.exists():
                raise BadInput(f"{self.path}: the extended sft target needs the judge fields, and this build asked "
                               f"its judges for none ({INPUTS_DIR}/{JUDGE_FIELDS_FILE} is missing)")
            prompt.fields = json.loads(recorded.read_text(encoding="utf-8"))
        return prompt

    def split_files(self, split: str) -> list[Path]:
        """corpus/ shards of `split`, in order (each sorted by id, one id range after the other)."""
        return sorted((self.path / "corpus" / "data").glob(f"{split}-*.parquet"))

    def splits(self) -> dict[str, Iterator[pa.Table]]:
        """train / validation exactly as corpus/ has them (balanced and split at build time), streamed."""
        return {split: (pa.Table.from_batches([b]) for b in batches(files, unified_schema(files)))
                for split in SPLITS for files in [self.split_files(split)]}


def open_build(build_dir: Path, config_path: Path | None = None) -> FinishedBuild:
    """A finished build (manifest, final stage and corpus/ written); BadInput naming what is missing.

    The config is the one recorded in `inputs/` (read leniently: only `name` and
    `export.label_position` matter here, so builds of older synth versions re-export too),
    or `config_path` for builds made before synth recorded it.
    """
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise BadInput(f"{build_dir}: no such build directory")
    required = ("manifest.json", f"stages/{final_stage(build_dir)}/_SUCCESS.json", "corpus/data/train-00000-of-*.parquet")
    for relative in required:
        if not any(build_dir.glob(relative)):
            raise BadInput(f"{build_dir}: not a finished build ({relative} is missing); "
                           "run or resume it with `synth build CONFIG --out BUILD_DIR`")
    if config_path is not None:
        config, templates_dir, _ = load_config(Path(config_path))
        dialogue_judge = templates_dir / "shared" / DIALOGUE_JUDGE_FILE
        return FinishedBuild(build_dir, config.name, config.export.label_position,
                             templates_dir / "shared" / "judge.yaml", config.export.sft_target,
                             dialogue_judge if dialogue_judge.exists() else None)
    recorded, judge = build_dir / INPUTS_DIR / "config.yaml", build_dir / INPUTS_DIR / "judge.yaml"
    if not recorded.exists() or not judge.exists():
        raise BadInput(f"{build_dir}: {INPUTS_DIR}/config.yaml or {INPUTS_DIR}/judge.yaml is missing (built by an "
                       "older synth?): pass the build's config with --config")
    try:
        raw = yaml.safe_load(recorded.read_text(encoding="utf-8"))
        export = raw.get("export") or {}
        return FinishedBuild(build_dir, str(raw["name"]), str(export.get("label_position", "before")), judge,
                             str(export.get("sft_target", "libra")), recorded_dialogue_judge(build_dir))
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError) as e:
        raise BadInput(f"{recorded}: unreadable recorded config ({type(e).__name__}: {e})") from None


def export_format(build_dir: Path, fmt: str, path: Path, *, config_path: Path | None = None,
                  label_position: str | None = None, sft_target: str | None = None) -> dict[str, Any]:
    """Re-export one view of a finished build into `path` (see `synth export --help`)."""
    from synth.lock import BuildLock
    from synth.sft import write_alpaca, write_sft

    if fmt not in EXPORT_FORMATS:
        raise BadInput(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    build = open_build(build_dir, config_path)
    _check_target(build.path, Path(path), directory=fmt in ("sft", "alpaca"))
    position = label_position or build.label_position
    with BuildLock(build.path):  # no build rewrites corpus/ while it is read
        splits = build.splits()
        if fmt == "sft":
            counts = write_sft(path, splits, build.guard_prompt(sft_target), label_position=position,
                               name=build.name)
        elif fmt == "alpaca":
            counts = write_alpaca(path, splits, build.guard_prompt(sft_target), label_position=position)
        else:
            counts = {"rows": _write_corpus_jsonl(build, fmt, Path(path))}
    return {"format": fmt, "path": str(path), **counts}


def _write_corpus_jsonl(build: FinishedBuild, fmt: str, path: Path) -> int:
    """train and validation merged in id order, as libra-test rows or as whole rows with `split`."""
    files = {split: build.split_files(split) for split in SPLITS}
    schema = unified_schema([f for split in SPLITS for f in files[split]]).append(pa.field("split", pa.string()))
    ids = read_column([*files["train"], *files["validation"]], "id")

    def with_split() -> Iterator[pa.RecordBatch]:
        for split in SPLITS:
            for batch in batches(files[split], schema.remove(schema.get_field_index("split"))):
                yield conform(batch.append_column("split", pa.array([split] * len(batch), pa.string())), schema)

    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:  # next to the output: writable
        corpus = SortedRows(with_split(), ids, schema, Path(tmp) / "corpus")
        if fmt == "libra-test":
            return write_jsonl(path, (row for t in corpus for row in libra_rows(t)))
        return write_jsonl(path, (row for t in corpus for row in t.to_pylist()))


def _check_target(build_dir: Path, path: Path, *, directory: bool) -> None:
    build, target = build_dir.resolve(), path.resolve()
    if target == build or target in build.parents or build / "stages" in (target, *target.parents):
        raise BadInput(f"--out {path}: refusing to write over the build directory or its stages")
    if directory:
        if target.exists() and not target.is_dir():
            raise BadInput(f"--out {path}: exists and is not a directory")
        if target.is_dir() and any(target.iterdir()) and not (target / "dataset_info.json").exists():
            raise BadInput(f"--out {path}: a non-empty directory that is not an earlier export; "
                           "choose a new or empty directory")
    elif target.is_dir():
        raise BadInput(f"--out {path}: is a directory; this format writes one .jsonl file")
    if not target.parent.is_dir():
        raise BadInput(f"--out {path}: parent directory {path.parent} does not exist")


def _labels_worth(measured: dict[str, Any] | None) -> str:
    """The card's "what the labels are worth": the last eval-judges of these judges, per gold set."""
    from synth.eval_judges import measured_figures

    rows = measured_figures(measured)
    if not rows:
        return ("No `synth eval-judges` was recorded for these judges: how often their labels are right "
                "is not measured. Measure them on labelled pairs nobody tuned them on before using this corpus.")

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    table = "| gold set | n | AUROC | accuracy of the labels | labelled share |\n|---|---|---|---|---|\n"
    table += "".join(f"| {r['gold']} | {r['n']} | {f(r['auroc'])} | {f(r['accuracy'])} | {r['share']:.0%} |\n"
                     for r in rows)
    return ("The last `synth eval-judges` of these judges (same templates, rubrics, models, sampling)"
            + (" was a dry run (stand-in engine): the figures below mean nothing" if measured.get("dry_run") else "")
            + ". A gold set the judges' rubrics were tuned on flatters them; a public set nobody here "
            "wrote is the better guide.\n\n" + table)


def _write_card(path: Path, config: PipelineConfig, corpus: pd.DataFrame, counts: dict[str, Any],
                judges_measured: dict[str, Any] | None = None) -> None:
    table = ""
    if len(corpus):
        pivot = corpus.pivot_table(index="scenario_name", columns="label", values="id", aggfunc="count", fill_value=0)
        table = "| scenario | " + " | ".join(pivot.columns) + " |\n|---|" + "---|" * len(pivot.columns) + "\n"
        for name, row in pivot.iterrows():
            table += f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |\n"
    tier = counts["controversial"]
    dialogues = counts.get(DIALOGUES) or {"rows": 0, "train": 0, "validation": 0}
    reviewed = counts[REVIEWED]
    coverage = ""
    if counts.get("coverage"):  # where a question judge ran: what was asked for beside what it confirmed
        from synth.report.render import coverage_headline

        coverage = f"\n- coverage: {coverage_headline(counts['coverage'])}"
    text = f"""---
{_configs_block(path.parent)}
language:
- zh
task_categories:
- text-classification
tags:
- safety
- guard
---

# {config.name}: Chinese safety-guard pretraining corpus

{CONTENT_WARNING}

Built by synth from scenario templates: each row is a question written by an LLM from
sampled elements (harmful, or a benign look-alike), one responder's answer, and the label
two judge models agreed on (`安全` / `不安全`) with the judge's analysis (`analyze`).

Configurations of one dataset (`datasets.load_dataset(path, name)`):
- `default`: the agreed labels (the Libra-format corpus).
- `strict`: the agreed labels plus the controversial tier (`{CONTROVERSIAL}`: the judges disagreed,
  or the label checks doubt an agreed label: a refusal labelled 不安全, a 安全 label whose
  analysis says harmful, a benign question labelled 不安全) counted `{VIEWS['strict']}`.
- `loose`: the same, the tier counted `{VIEWS['loose']}`.
- `{DIALOGUES}`: the rows of `default` that are conversations of two user turns or more, in the same
  split ({dialogues['rows']} rows: train {dialogues['train']}, validation {dialogues['validation']}; only the
  splits with rows are listed, and the configuration is left out when there are none).
- `{REVIEWED}`: the rows of `default` whose label people gave or confirmed (`synth review pull`), in the
  same split ({reviewed['rows']} rows: train {reviewed['train']}, validation {reviewed['validation']}; left out
  when there are none): for stage-two training on human labels.
Every row has its whole conversation as `messages` (chat format: the earlier turns, then `question`
and `response`; two messages for a single-turn row), its number of user turns `turns` and the
dialogue `strategy` (`""` for a single-turn row); the label judges the last answer in the context
of the whole conversation. `../libra_test.jsonl` (Libra-Test's single-turn format) leaves out the
{dialogues['rows']} dialogue rows.
Every row says where its label comes from in `label_source`: `{JUDGES}` (the two judges agreed),
`{HUMAN}` (people's majority label, over the judges'), `{AGREED}` (people gave the judges' label).
Tier rows keep the reason in `controversy` and each judge's verdict in `judgements`. A copy of
the tier, with the pairs diverted elsewhere, is the stage-two annotation pool in `../hard/`
(`hard_reason`); dropped rows are in `../rejects/` with their reasons.

- rows: {counts['corpus_rows']} (train {counts['train_rows']}, validation {counts['validation_rows']})
- labels: {json.dumps(counts['labels'], ensure_ascii=False)}
- kinds: {json.dumps(counts['kinds'], ensure_ascii=False)}
- scenarios: {counts['scenarios']}, subcategories: {counts['subcategories']}{coverage}
- controversial tier (in `strict`/`loose`): {tier['rows']} (train {tier['train']}, validation {tier['validation']}) \
{json.dumps(tier['by_reason'], ensure_ascii=False)}
- hard pool (in `../hard/`): {counts['hard_rows']} {json.dumps(counts.get('hard_reasons', {}), ensure_ascii=False)}
- cut by balancing (in `../rejects/balance.parquet`): {sum(counts.get('balance', {}).get('cut', {}).values())}
- labels from people: {_people_line(reviewed, counts['corpus_rows'])}

{table}
## What the labels are worth

{_labels_worth(judges_measured)}
"""
    path.write_text(text, encoding="utf-8")


def _people_line(reviewed: dict[str, Any], rows: int) -> str:
    """The card's line on people's labels (counts[REVIEWED])."""
    sources = reviewed["label_source"]
    if not reviewed["people_labelled"]:
        return f"none of the {rows} rows (no `synth review pull` yet): every label is the judges'"
    return (f"{sources[HUMAN]} of the {rows} rows have people's label over the judges' ({reviewed['settled_from_tier']} "
            f"of them settled from the controversial tier), {sources[AGREED]} have the judges' label confirmed by "
            f"people; {reviewed['moved_to_tier']} agreed rows people left {CONTROVERSIAL} are in the tier "
            f"({reviewed['people_labelled']} rows labelled by people in all)")


def _configs_block(corpus_dir: Path) -> str:
    """The card's `configs:`, each with a description that names this export's rows by a hash
    (of their ids, labels and texts, in file order: the same whatever the shard size): datasets
    (5.2) caches a local folder's configurations by the folder's name and the card, so without
    it load_dataset("a/corpus") then load_dataset("b/corpus") would return a's rows."""
    digest = hashlib.sha256()
    for view in ("data", *VIEWS, DIALOGUES, REVIEWED):
        for split in SPLITS:
            for file in sorted((corpus_dir / view).glob(f"{split}-*.parquet")):
                parquet = pq.ParquetFile(file)
                columns = [c for c in FINGERPRINT_COLUMNS if c in parquet.schema_arrow.names]
                for batch in parquet.iter_batches(columns=columns):
                    for row in zip(*(c.to_pylist() for c in batch.columns)):
                        digest.update(json.dumps(row, ensure_ascii=False, default=str).encode())
    fingerprint = digest.hexdigest()[:16]
    views = {"default": ("agreed labels", ["data"]),
             **{view: (f"agreed labels, {CONTROVERSIAL} counted {label}", ["data", view]) for view, label in VIEWS.items()},
             DIALOGUES: ("agreed labels, conversations of two user turns or more", [DIALOGUES]),
             REVIEWED: ("labels people gave or confirmed", [REVIEWED])}
    lines = ["configs:"]
    for name, (what, dirs) in views.items():
        # `dialogues` and `reviewed` list the splits they have rows in (none: no configuration), as
        # datasets loads no empty split
        splits = [split for split in SPLITS
                  if name not in (DIALOGUES, REVIEWED) or any((corpus_dir / name).glob(f"{split}-*.parquet"))]
        if not splits:
            continue
        lines += [f"- config_name: {name}", f'  description: "{what} (rows {fingerprint})"', "  data_files:"]
        for split in splits:
            lines.append(f"  - split: {split}")
            lines.append(f"    path: [{', '.join(f'{d}/{split}-*.parquet' for d in dirs)}]")
    return "\n".join(lines)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
