"""Exports of a finished build: corpus/, libra_test.jsonl, hard/, rejects/.

Everything is sorted by id and written from the stage outputs on disk, so the
same stage outputs always give byte-identical exports, and `synth export` can
redo this without rerunning a build.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from synth.config import PipelineConfig
from synth.rows import stable_id

CORPUS_COLUMNS = (
    "id", "scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "attack", "question",
    "response", "responder", "persona", "label", "analyze", "judgements", "elements", "generator",
    "template_id", "template_hash", "finish_reason", "seed",
)
LIBRA_KEYS = ("source", "category_name", "sub_category_name", "question", "response", "label", "analyze", "id")
LIBRA_SOURCE = "Synthetic Data"
FINAL_STAGE = "dedup_pairs"

CONTENT_WARNING = (
    "**Content warning.** This dataset contains machine-written questions that request harmful, "
    "illegal, hateful or dangerous content, and model answers that may comply with them. It exists "
    "to train and evaluate safety classifiers. Do not use it to train a model to produce such content."
)


def read_table(path: Path) -> pd.DataFrame:
    files = sorted(Path(path).glob("*.parquet"))
    if not files:
        return pd.DataFrame()
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables, promote_options="default").to_pandas()


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


def export_build(out: Path, config: PipelineConfig) -> dict[str, Any]:
    out = Path(out)
    final = read_table(out / "stages" / FINAL_STAGE / "rows")
    corpus = final[[c for c in CORPUS_COLUMNS if c in final.columns]].sort_values("id").reset_index(drop=True)
    train, validation = split_train_validation(corpus, config.export.validation_share, config.seed)

    corpus_dir = _fresh_dir(out / "corpus")
    _write_parquet(train, corpus_dir / "data" / "train-00000-of-00001.parquet")
    _write_parquet(validation, corpus_dir / "data" / "validation-00000-of-00001.parquet")

    libra = [
        {"source": LIBRA_SOURCE, "category_name": r["scenario_name"], "sub_category_name": r["subcategory_name"],
         "question": r["question"], "response": r["response"], "label": r["label"], "analyze": r["analyze"],
         "id": r["id"]}
        for r in corpus.to_dict("records")
    ]
    _write_jsonl(out / "libra_test.jsonl", libra)

    hard = read_table(out / "stages" / "annotate" / "hard")
    hard_dir = _fresh_dir(out / "hard")
    if not hard.empty:
        hard = hard.drop(columns=["reject_reason"], errors="ignore").sort_values("id")
    _write_parquet(hard, hard_dir / "hard.parquet")

    rejects_dir = _fresh_dir(out / "rejects")
    reject_counts = {}
    for stage_dir in sorted((out / "stages").iterdir()):
        rejects = read_table(stage_dir / "rejects")
        if not rejects.empty:
            rejects = rejects.sort_values("id")
        _write_parquet(rejects, rejects_dir / f"{stage_dir.name}.parquet")
        reject_counts[stage_dir.name] = len(rejects)

    counts = {
        "corpus_rows": len(corpus),
        "train_rows": len(train),
        "validation_rows": len(validation),
        "hard_rows": len(hard),
        "rejects": reject_counts,
        "labels": {k: int(v) for k, v in corpus["label"].value_counts().sort_index().items()} if len(corpus) else {},
        "kinds": {k: int(v) for k, v in corpus["kind"].value_counts().sort_index().items()} if len(corpus) else {},
        "scenarios": int(corpus["scenario"].nunique()) if len(corpus) else 0,
        "subcategories": int(corpus[["scenario", "subcategory"]].drop_duplicates().shape[0]) if len(corpus) else 0,
    }
    _write_card(corpus_dir / "README.md", config, corpus, counts)
    return counts


def _write_card(path: Path, config: PipelineConfig, corpus: pd.DataFrame, counts: dict[str, Any]) -> None:
    table = ""
    if len(corpus):
        pivot = corpus.pivot_table(index="scenario_name", columns="label", values="id", aggfunc="count", fill_value=0)
        table = "| scenario | " + " | ".join(pivot.columns) + " |\n|---|" + "---|" * len(pivot.columns) + "\n"
        for name, row in pivot.iterrows():
            table += f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |\n"
    text = f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: validation
    path: data/validation-*.parquet
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
Pairs the judges disagreed on are in `../hard/`, dropped rows with their reasons in `../rejects/`.

- rows: {counts['corpus_rows']} (train {counts['train_rows']}, validation {counts['validation_rows']})
- labels: {json.dumps(counts['labels'], ensure_ascii=False)}
- kinds: {json.dumps(counts['kinds'], ensure_ascii=False)}
- scenarios: {counts['scenarios']}, subcategories: {counts['subcategories']}
- judge disagreements (hard pool): {counts['hard_rows']}

{table}
"""
    path.write_text(text, encoding="utf-8")


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False), tmp)
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
