"""Exports of a finished build: corpus/, sft/, libra_test.jsonl, hard/, rejects/.

Everything is sorted by id and written from the stage outputs on disk, so the
same stage outputs always give byte-identical exports, and `synth export` can
redo this without rerunning a build.

A build also records what its exports read besides the stage outputs, in
`<build>/inputs/`: `config.yaml` (the validated config, templates/seeds paths made
absolute) and `judge.yaml` (a copy of the guard prompt the sft/ view renders).
`synth export` reads only the build directory, so a build can be moved, and
re-exported after templates/ changed, with the prompt its judges saw.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from synth.balance import apply_balance
from synth.config import PipelineConfig, load_config
from synth.errors import BadInput
from synth.rows import stable_id, to_arrow

CORPUS_COLUMNS = (
    "id", "scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "attack", "question",
    "response", "responder", "persona", "label", "analyze", "judgements", "elements", "generator",
    "template_id", "template_hash", "finish_reason", "seed",
)
LIBRA_KEYS = ("source", "category_name", "sub_category_name", "question", "response", "label", "analyze", "id")
LIBRA_SOURCE = "Synthetic Data"
FINAL_STAGE = "dedup_pairs"
INPUTS_DIR = "inputs"
EXPORT_FORMATS = ("sft", "alpaca", "libra-test", "jsonl")

CONTENT_WARNING = (
    "**Content warning.** This dataset contains machine-written questions that request harmful, "
    "illegal, hateful or dangerous content, and model answers that may comply with them. It exists "
    "to train and evaluate safety classifiers. Do not use it to train a model to produce such content."
)


def read_table_glob(path: Path, pattern: str) -> pd.DataFrame:
    files = sorted(Path(path).glob(pattern))
    if not files:
        return pd.DataFrame()
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default").to_pandas()


def read_table(path: Path) -> pd.DataFrame:
    return read_table_glob(path, "*.parquet")


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


def load_balanced(out: Path, config: PipelineConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(corpus, rows cut by `balance`, balance counts): the final stage's rows, balanced, sorted by id."""
    final = read_table(Path(out) / "stages" / FINAL_STAGE / "rows")
    corpus = final[[c for c in CORPUS_COLUMNS if c in final.columns]].sort_values("id").reset_index(drop=True)
    return apply_balance(corpus, config.balance, config.seed)


def merge_hard(out: Path) -> pd.DataFrame:
    """Every stage's hard pool (`stages/*/hard/`), with `hard_reason` and `hard_stage`, sorted by id."""
    parts = []
    for stage_dir in sorted(p for p in (Path(out) / "stages").iterdir() if p.is_dir()):
        hard = read_table(stage_dir / "hard")
        if hard.empty:
            continue
        reason = hard["reject_reason"] if "reject_reason" in hard.columns else ""
        parts.append(hard.drop(columns=["reject_reason"], errors="ignore").assign(hard_reason=reason,
                                                                                 hard_stage=stage_dir.name))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True).sort_values(["id", "hard_stage"]).reset_index(drop=True)


def export_build(out: Path, config: PipelineConfig, catalog: Any = None) -> dict[str, Any]:
    """Write every export. `catalog` (the build's templates) gives the guard prompt for sft/;
    without it the prompt is the judge template next to the config (see `snapshot_inputs`)."""
    out = Path(out)
    corpus, cut, balance = load_balanced(out, config)
    balance["config"] = config.balance.model_dump(mode="json")
    train, validation = split_train_validation(corpus, config.export.validation_share, config.seed)

    corpus_dir = _fresh_dir(out / "corpus")
    _write_parquet(train, corpus_dir / "data" / "train-00000-of-00001.parquet")
    _write_parquet(validation, corpus_dir / "data" / "validation-00000-of-00001.parquet")

    _write_jsonl(out / "libra_test.jsonl", libra_rows(corpus))

    hard = merge_hard(out)
    hard_dir = _fresh_dir(out / "hard")
    _write_parquet(hard, hard_dir / "hard.parquet")

    rejects_dir = _fresh_dir(out / "rejects")
    reject_counts = {}
    for stage_dir in sorted((out / "stages").iterdir()):
        rejects = read_table(stage_dir / "rejects")
        if not rejects.empty:
            rejects = rejects.sort_values("id")
        _write_parquet(rejects, rejects_dir / f"{stage_dir.name}.parquet")
        reject_counts[stage_dir.name] = len(rejects)
    _write_parquet(cut.assign(stage="balance"), rejects_dir / "balance.parquet")
    reject_counts["balance"] = len(cut)

    counts = {
        "corpus_rows": len(corpus),
        "train_rows": len(train),
        "validation_rows": len(validation),
        "hard_rows": len(hard),
        "hard_reasons": ({str(k): int(v) for k, v in hard["hard_reason"].value_counts().sort_index().items()}
                         if len(hard) else {}),
        "balance": balance,
        "rejects": reject_counts,
        "labels": {k: int(v) for k, v in corpus["label"].value_counts().sort_index().items()} if len(corpus) else {},
        "kinds": {k: int(v) for k, v in corpus["kind"].value_counts().sort_index().items()} if len(corpus) else {},
        "scenarios": int(corpus["scenario"].nunique()) if len(corpus) else 0,
        "subcategories": int(corpus[["scenario", "subcategory"]].drop_duplicates().shape[0]) if len(corpus) else 0,
    }
    _write_card(corpus_dir / "README.md", config, corpus, counts)

    from synth.sft import GuardPrompt, write_sft

    prompt = GuardPrompt.from_file(snapshot_inputs(out, config, catalog))
    counts["sft"] = write_sft(out / "sft", {"train": train, "validation": validation}, prompt,
                              label_position=config.export.label_position, name=config.name)
    return counts


def libra_rows(corpus: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"source": LIBRA_SOURCE, "category_name": r["scenario_name"], "sub_category_name": r["subcategory_name"],
         "question": r["question"], "response": r["response"], "label": r["label"], "analyze": r["analyze"],
         "id": r["id"]}
        for r in corpus.to_dict("records")
    ]


def snapshot_inputs(out: Path, config: PipelineConfig, catalog: Any = None) -> Path:
    """Record in `<out>/inputs/` the config and the judge template this build's exports use.

    The judge comes from `catalog` when given, else from the config's templates dir.
    A config loaded from `<out>/inputs/` (a re-export) leaves the record as it is.
    Returns the path of the recorded judge template.
    """
    inputs = Path(out) / INPUTS_DIR
    judge_copy = inputs / "judge.yaml"
    if config.source is not None and config.source.parent == inputs.resolve():
        return judge_copy
    inputs.mkdir(parents=True, exist_ok=True)
    if catalog is not None:
        text = ("# The guard prompt this build's judges used (synth dumps it from the build's templates).\n"
                + yaml.safe_dump(catalog.judge.model_dump(), allow_unicode=True, sort_keys=False, width=1000))
    elif config.templates_dir is not None:
        source = config.templates_dir / "shared" / "judge.yaml"
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as e:
            raise BadInput(f"{source}: cannot read the judge template: {e.strerror}") from None
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
    return judge_copy


# -- re-export of a finished build (`synth export`) ---------------------------------------


@dataclass
class FinishedBuild:
    """What a re-export needs from a finished build; the rows come from its corpus/."""

    path: Path
    name: str
    label_position: str
    judge: Path  # the guard prompt template the sft views render

    def splits(self) -> dict[str, pd.DataFrame]:
        """train / validation exactly as corpus/ has them (balanced and split at build time)."""
        return {split: read_table_glob(self.path / "corpus" / "data", f"{split}-*.parquet")
                for split in ("train", "validation")}


def open_build(build_dir: Path, config_path: Path | None = None) -> FinishedBuild:
    """A finished build (manifest, final stage and corpus/ written); BadInput naming what is missing.

    The config is the one recorded in `inputs/` (read leniently: only `name` and
    `export.label_position` matter here, so builds of older synth versions re-export too),
    or `config_path` for builds made before synth recorded it.
    """
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise BadInput(f"{build_dir}: no such build directory")
    required = ("manifest.json", f"stages/{FINAL_STAGE}/_SUCCESS.json", "corpus/data/train-00000-of-00001.parquet")
    for relative in required:
        if not (build_dir / relative).exists():
            raise BadInput(f"{build_dir}: not a finished build ({relative} is missing); "
                           "run or resume it with `synth build CONFIG --out BUILD_DIR`")
    if config_path is not None:
        config, templates_dir, _ = load_config(Path(config_path))
        return FinishedBuild(build_dir, config.name, config.export.label_position,
                             templates_dir / "shared" / "judge.yaml")
    recorded, judge = build_dir / INPUTS_DIR / "config.yaml", build_dir / INPUTS_DIR / "judge.yaml"
    if not recorded.exists() or not judge.exists():
        raise BadInput(f"{build_dir}: {INPUTS_DIR}/config.yaml or {INPUTS_DIR}/judge.yaml is missing (built by an "
                       "older synth?): pass the build's config with --config")
    try:
        raw = yaml.safe_load(recorded.read_text(encoding="utf-8"))
        export = raw.get("export") or {}
        return FinishedBuild(build_dir, str(raw["name"]), str(export.get("label_position", "before")), judge)
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError) as e:
        raise BadInput(f"{recorded}: unreadable recorded config ({type(e).__name__}: {e})") from None


def export_format(build_dir: Path, fmt: str, path: Path, *, config_path: Path | None = None,
                  label_position: str | None = None) -> dict[str, Any]:
    """Re-export one view of a finished build into `path` (see `synth export --help`)."""
    from synth.lock import BuildLock
    from synth.sft import GuardPrompt, write_alpaca, write_sft

    if fmt not in EXPORT_FORMATS:
        raise BadInput(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    build = open_build(build_dir, config_path)
    _check_target(build.path, Path(path), directory=fmt in ("sft", "alpaca"))
    position = label_position or build.label_position
    with BuildLock(build.path):  # no build rewrites corpus/ while it is read
        splits = build.splits()
        if fmt == "sft":
            counts = write_sft(path, splits, GuardPrompt.from_file(build.judge), label_position=position,
                               name=build.name)
        elif fmt == "alpaca":
            counts = write_alpaca(path, splits, GuardPrompt.from_file(build.judge), label_position=position)
        else:
            corpus = pd.concat([df.assign(split=split) for split, df in splits.items()]).sort_values("id")
            if fmt == "libra-test":
                rows = libra_rows(corpus)
            else:
                rows = [_jsonable(r) for r in corpus.to_dict("records")]
            _write_jsonl(path, rows)
            counts = {"rows": len(rows)}
    return {"format": fmt, "path": str(path), **counts}


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


def _jsonable(value: Any) -> Any:
    """Parquet values (numpy arrays, numpy scalars) as plain JSON values."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _write_card(path: Path, config: PipelineConfig, corpus: pd.DataFrame, counts: dict[str, Any]) -> None:
    table = ""
    if len(corpus):
        pivot = corpus.pivot_table(index="scenario_name", columns="label", values="id", aggfunc="count", fill_value=0)
        table = "| scenario | " + " | ".join(pivot.columns) + " |\n|---|" + "---|" * len(pivot.columns) + "\n"
        for name, row in pivot.iterrows():
            table += f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |\n"
    # No `configs:` block: with one, datasets (5.2) caches a local folder by its name alone, so
    # load_dataset("a/corpus") then load_dataset("b/corpus") returns a's rows. The split names
    # come from the file names (data/train-*, data/validation-*) instead.
    text = f"""---
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
Pairs the judges disagreed on, and agreed pairs that the label checks doubt (a refusal
labelled 不安全, a 安全 label whose analysis says harmful, a benign question labelled
不安全), are in `../hard/` with `hard_reason`; dropped rows with their reasons in `../rejects/`.

- rows: {counts['corpus_rows']} (train {counts['train_rows']}, validation {counts['validation_rows']})
- labels: {json.dumps(counts['labels'], ensure_ascii=False)}
- kinds: {json.dumps(counts['kinds'], ensure_ascii=False)}
- scenarios: {counts['scenarios']}, subcategories: {counts['subcategories']}
- hard pool (judge disagreements and label-noise checks, in `../hard/`): {counts['hard_rows']} \
{json.dumps(counts.get('hard_reasons', {}), ensure_ascii=False)}
- cut by balancing (in `../rejects/balance.parquet`): {sum(counts.get('balance', {}).get('cut', {}).values())}

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
    pq.write_table(to_arrow(df), tmp)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
