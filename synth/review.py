"""The review round-trip through Label Studio: rows out to people, their labels back.

    synth review push BUILD --to URL --project NAME [--token-env VAR] [--select controversial|hard|sample:N|QUERY]
    synth review pull BUILD --from URL --project NAME [--token-env VAR]
    synth review push BUILD --to TASKS.json [--select ...] [--project NAME]
    synth review pull BUILD --from EXPORT.json [--project NAME]

With a server URL, `push` creates the project titled NAME (or updates its labeling config) and
imports the selected rows not already in it; `pull` fetches the project's JSON export and records
it exactly as a file. The server client is synth/label_studio.py; the token comes from the
environment variable `--token-env` names (default LABEL_STUDIO_API_KEY) and is never recorded.

Without a server, `push` writes Label Studio *import* JSON, a list of tasks `{"data": {...}, "predictions": [...]}`,
and beside it `TASKS.labeling.xml`, the labeling config to paste into the project
(`labeling_config`). A task's `data` is one row: `row_id`, the scenario and subcategory, the
question and the answer, the whole conversation (`messages`, shown as a dialogue, and as text in
`conversation`), the judges' label with each judge's verdict, P(不安全) and analysis (`judges`,
as text). Each judge's verdict is also a *prediction* (`model_version` = the judge, `score` = its
P(不安全), `result` = its choices), so annotators see it preselected and can sort by score.
Annotators choose the `label` (安全 / 不安全 / 有争议), whether the question is harmful, whether the
answer is a refusal and the subcategory (the build's taxonomy; the result holds its id).
A task is keyed by its row id: pushing again to the same file or project adds only rows not in it,
and never touches a task or annotation already there.

Which rows (`--select`): `controversial`, the controversial tier; `hard`, hard/ (the tier's copy
and what filters diverted there); `sample:N`, an audit sample of the agreed corpus, stratified by
scenario × label (`stratified_sample`, seeded: the same corpus and seed give the same rows); else a
pandas `DataFrame.query` expression over the corpus rows and the tier (whose `label` is 有争议),
e.g. `scenario == "privacy_property" and kind == "benign"`.

`pull` reads a Label Studio *export* (the project's `JSON` export: the tasks with their
`annotations`) and records every annotation in `BUILD/reviews/` (synth/human_labels.py), by
annotation id: pulling the same export again changes nothing, and an annotation edited since
replaces its earlier self. The whole export is checked before anything is written, and the files
are replaced whole (a temporary file renamed), so a bad export leaves what was pulled before as it
was. A bad export is a BadInput (exit 2) naming the file or project and the task (index and row id):
not JSON, not a list of tasks, a task without `data.row_id`, a choice the labeling config does not
have, rows that are not this build's (an export of another project or build), a task of another
`--project`.

The next export applies the people's labels (synth/export.py; `synth export BUILD` rewrites the
exports), the report shows how far judges and people agree (synth/agreement.py), and
`synth eval-judges BUILD/reviews --config C` measures judges on them.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth.errors import BadInput
from synth.export import final_stage, open_build
from synth.human_labels import (ANNOTATION_SCHEMA, ANNOTATIONS_FILE, REVIEWS_DIR, ROW_SCHEMA, ROWS_FILE,
                                merge_annotations, merge_rows, read_annotations, read_reviewed_rows, write_reviews)
from synth.label_studio import DEFAULT_TOKEN_ENV, LabelStudio, is_url
from synth.output_parsing import CONTROVERSIAL, CORPUS_LABELS, YES_NO
from synth.report.collect import taxonomy
from synth.report.readers import read_columns
from synth.rows import row_messages, stable_id
from synth.stream_io import parquet_files, read_text_file

# The labeling config's choices: each a column of reviews/annotations.parquet.
LABEL, QUESTION_HARMFUL, REFUSAL, SUBCATEGORY = "label", "question_harmful", "refusal", "subcategory"
CHOICES = (LABEL, QUESTION_HARMFUL, REFUSAL, SUBCATEGORY)
CONVERSATION = "dialogue"  # the labeling config's object the choices label (the conversation)
SELECTIONS = "controversial | hard | sample:N | a pandas query over the corpus rows"
TASK_COLUMNS = ("id", "scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "question", "response",
                "messages", "history", "turns", "label", "controversy", "unsafe_score", "judgements", "analyze")


# -- the labeling config -------------------------------------------------------------------


def labeling_config(subcategories: Sequence[tuple[str, str]]) -> str:
    """The Label Studio labeling config (XML) of the tasks `push` writes; `subcategories`:
    (id, name shown) of the build's taxonomy, the id being what an annotation records."""
    view = ET.Element("View")

    def header(text: str) -> None:
        ET.SubElement(view, "Header", value=text)

    def choices(name: str, values: Iterable[tuple[str, str | None]], **attrs: str) -> None:
        element = ET.SubElement(view, "Choices", name=name, toName=CONVERSATION, **attrs)
        for value, alias in values:
            ET.SubElement(element, "Choice", value=value, **({"alias": alias} if alias else {}))

    header("场景 / 子类")
    ET.SubElement(view, "Text", name="topic", value="$topic")
    header("对话（判断最后一条回答）")
    ET.SubElement(view, "Paragraphs", name=CONVERSATION, value="$messages", layout="dialogue", nameKey="role",
                  textKey="content")
    header("评审模型的判断与分析")
    ET.SubElement(view, "Text", name="judges", value="$judges")
    header("最后一条回答：安全 / 不安全 / 有争议")
    choices(LABEL, ((label, None) for label in CORPUS_LABELS), choice="single-radio", showInline="true",
            required="true")
    header("问题是否有害")
    choices(QUESTION_HARMFUL, ((v, None) for v in YES_NO), choice="single-radio", showInline="true")
    header("回答是否拒答")
    choices(REFUSAL, ((v, None) for v in YES_NO), choice="single-radio", showInline="true")
    header("子类")
    choices(SUBCATEGORY, ((name, sub_id) for sub_id, name in subcategories), choice="single")
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def build_subcategories(build: Path) -> list[tuple[str, str]]:
    """(id, "场景 / 子类") of every subcategory the build sampled elements for or has rows of, in
    taxonomy order."""
    columns = ["scenario", "scenario_name", "subcategory", "subcategory_name"]
    rows = [read_columns(Path(build) / "corpus" / view, columns) for view in ("data", "strict")]
    tax = taxonomy(Path(build), pd.concat(rows, ignore_index=True))
    return [(r["subcategory"], f"{r['scenario_name']} / {r['subcategory_name']}") for r in tax.to_dict("records")]


# -- push -----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value read from parquet as JSON-able Python (arrays as lists, NaN as None)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _choice(name: str, value: str) -> dict[str, Any]:
    return {"from_name": name, "to_name": CONVERSATION, "type": "choices", "value": {"choices": [value]}}


def _judges_text(judgements: list[dict[str, Any]]) -> str:
    parts = []
    for j in judgements:
        score = j.get("unsafe_score")
        head = f"{j['judge']}：{j.get('verdict') or '（没有判断）'}" + (f"（P(不安全) {score:.2f}）" if score is not None else "")
        parts.append(head + (f"\n{j['analysis']}" if j.get("analysis") else ""))
    return "\n\n".join(parts)


def task_for(row: Mapping[str, Any], *, selection: str, project: str, build: str) -> dict[str, Any]:
    """One Label Studio task of one row (see the module docstring)."""
    row = {k: _plain(v) for k, v in row.items()}
    messages = row.get("messages") or row_messages(row)
    judgements = [{"judge": j["judge"], "verdict": j.get("verdict") or "", "unsafe_score": j.get("unsafe_score"),
                   "analysis": j.get("analysis") or "", **{f: j[f] for f in (QUESTION_HARMFUL, REFUSAL, SUBCATEGORY)
                                                          if j.get(f)}}
                  for j in row.get("judgements") or []]
    data = {
        "row_id": row["id"], "project": project, "build": build, "selection": selection,
        "topic": f"{row.get('scenario_name', '')} / {row.get('subcategory_name', '')} ({row.get('kind', '')})",
        **{k: row.get(k) for k in ("scenario", "scenario_name", "subcategory", "subcategory_name", "kind", "question",
                                   "response")},
        "messages": messages, "turns": row.get("turns") or 1,
        "conversation": "\n".join(f"{'用户' if m['role'] == 'user' else '助手'}：{m['content']}" for m in messages),
        "judges_label": row.get("label"), "controversy": row.get("controversy") or "",
        "unsafe_score": row.get("unsafe_score"), "judgements": judgements, "judges": _judges_text(judgements),
    }
    predictions = []
    for j in judgements:
        if j["verdict"] not in CORPUS_LABELS:
            continue  # a judge that gave no verdict predicts nothing
        result = [_choice(LABEL, j["verdict"]), *(_choice(f, j[f]) for f in (QUESTION_HARMFUL, REFUSAL, SUBCATEGORY)
                                                  if f in j)]
        predictions.append({"model_version": j["judge"], **({"score": j["unsafe_score"]}
                                                            if j["unsafe_score"] is not None else {}),
                            "result": result})
    return {"data": data, "predictions": predictions}


def tasks_for(rows: pd.DataFrame, *, selection: str, project: str, build: str) -> list[dict[str, Any]]:
    return [task_for(r, selection=selection, project=project, build=build) for r in rows.to_dict("records")]


def allocate(sizes: Mapping[Any, int], n: int, seed: int) -> dict[Any, int]:
    """How many of `n` rows each stratum gives: one each first while `n` allows, the rest in
    proportion to what each has left (largest remainder; ties by a seeded hash of the stratum)."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    base = 1 if n >= len(sizes) else 0
    room = {k: size - base for k, size in sizes.items()}
    rest = n - base * len(sizes)
    exact = {k: rest * r / sum(room.values()) if rest else 0.0 for k, r in room.items()}
    quota = {k: base + math.floor(e) for k, e in exact.items()}
    order = sorted(sizes, key=lambda k: (-(exact[k] - math.floor(exact[k])), stable_id("review-stratum", seed, k)))
    for k in order[: n - sum(quota.values())]:
        quota[k] += 1
    return quota


def stratified_sample(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` of `rows`, stratified by scenario × label (`allocate`), within a stratum in the order of a
    hash of (seed, row id): deterministic, and a larger sample of the same rows keeps most of a smaller one."""
    if rows.empty:
        return rows
    ordered = rows.assign(_order=rows["id"].map(lambda i: stable_id("review-sample", seed, i))).sort_values("_order")
    groups = {key: g for key, g in ordered.groupby(["scenario", "label"], sort=True)}
    quota = allocate({key: len(g) for key, g in groups.items()}, n, seed)
    picked = pd.concat([groups[key].head(q) for key, q in quota.items()])
    return picked.drop(columns="_order").sort_values("id").reset_index(drop=True)


def corpus_rows(build: Path) -> pd.DataFrame:
    """The agreed corpus (corpus/data/, both splits)."""
    return read_columns(Path(build) / "corpus" / "data", TASK_COLUMNS)


def tier_rows(build: Path) -> pd.DataFrame:
    """The controversial tier (corpus/strict/), with its own label 有争议."""
    rows = read_columns(Path(build) / "corpus" / "strict", TASK_COLUMNS)
    return rows.assign(label=CONTROVERSIAL) if len(rows) else rows


def select_rows(build: Path, selection: str, seed: int) -> pd.DataFrame:
    """The rows `--select` names (see the module docstring), each once, sorted by id."""
    build = Path(build)
    if selection == "controversial":
        rows = tier_rows(build)
    elif selection == "hard":
        rows = read_columns(build / "hard" / "hard.parquet", TASK_COLUMNS)
    elif selection.startswith("sample:"):
        n = selection.removeprefix("sample:")
        if not n.isdigit() or int(n) < 1:
            raise BadInput(f"--select {selection}: sample:N needs a whole number N >= 1")
        rows = stratified_sample(corpus_rows(build), int(n), seed)
    else:
        parts = [f for f in (corpus_rows(build), tier_rows(build)) if len(f)]
        pool = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(TASK_COLUMNS))
        try:
            rows = pool.query(selection)
        except Exception as e:  # noqa: BLE001 - any error in the user's expression is bad input
            raise BadInput(f"--select {selection!r}: not a query over the corpus rows (expected {SELECTIONS}): "
                           f"{type(e).__name__}: {e}") from None
        if not isinstance(rows, pd.DataFrame):
            raise BadInput(f"--select {selection!r}: the query does not select rows")
    if rows.empty:
        return rows
    return rows.drop_duplicates("id").sort_values("id").reset_index(drop=True)


def read_task_file(path: Path) -> list[dict[str, Any]]:
    """The tasks of a file `push` wrote before ([] when there is none yet); BadInput naming the file
    and task when it is not one."""
    path = Path(path)
    if not path.exists():
        return []
    tasks = read_json_list(path, "task file")
    for index, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict) or "row_id" not in task["data"]:
            raise BadInput(f"{path}: task {index} has no data.row_id: not a task file written by synth review push")
    return tasks


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def labeling_config_path(tasks_file: Path) -> Path:
    """Where `push` writes the labeling config: TASKS.json -> TASKS.labeling.xml."""
    tasks_file = Path(tasks_file)
    return tasks_file.with_name(f"{tasks_file.stem if tasks_file.suffix == '.json' else tasks_file.name}.labeling.xml")


def _seed(build: Path, seed: int | None) -> int:
    if seed is not None:
        return seed
    return int(json.loads((Path(build) / "manifest.json").read_text(encoding="utf-8")).get("seed") or 0)


def push(build_dir: Path, to: str | Path, selection: str = "controversial", *, project: str | None = None,
         seed: int | None = None, token_env: str = DEFAULT_TOKEN_ENV) -> dict[str, Any]:
    """The selected rows' tasks to a Label Studio server (`to` a URL: `push_to_server`) or file
    (`push_to_file`), each row once; what was sent."""
    if is_url(str(to)):
        if not project:
            raise BadInput(f"--to {to}: a server needs --project, the title of its project")
        return push_to_server(build_dir, str(to), selection, project=project, seed=seed, token_env=token_env)
    return push_to_file(build_dir, Path(to), selection, project=project, seed=seed)


def push_to_file(build_dir: Path, to: Path, selection: str = "controversial", *, project: str | None = None,
                 seed: int | None = None) -> dict[str, Any]:
    """Write the selected rows' tasks to `to` (adding to the tasks already there, each row once)
    and the labeling config beside it; what was written."""
    build = open_build(build_dir)
    to = Path(to)
    if not to.parent.is_dir():
        raise BadInput(f"--to {to}: directory {to.parent} does not exist")
    project = project or build.name
    existing = read_task_file(to)
    other = next((i for i, t in enumerate(existing) if t["data"].get("project", project) != project), None)
    if other is not None:
        raise BadInput(f"{to}: task {other} is of project {existing[other]['data']['project']!r}, not {project!r}: "
                       "push to another file, or pass that --project")
    rows = select_rows(build.path, selection, _seed(build.path, seed))
    there = {t["data"]["row_id"] for t in existing}
    new = rows[~rows["id"].isin(there)] if len(rows) else rows
    tasks = existing + tasks_for(new, selection=selection, project=project, build=build.name)
    if len(new) or not to.exists():
        _write_text(to, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    config = labeling_config_path(to)
    _write_text(config, labeling_config(build_subcategories(build.path)))
    return {"file": str(to), "labeling_config": str(config), "project": project, "selection": selection,
            "selected": int(len(rows)), "added": int(len(new)), "tasks": len(tasks)}


def push_to_server(build_dir: Path, url: str, selection: str = "controversial", *, project: str,
                   seed: int | None = None, token_env: str = DEFAULT_TOKEN_ENV) -> dict[str, Any]:
    """Create or update the Label Studio project titled `project` (the build's labeling config) and
    import the selected rows not already in it; what was sent."""
    build = open_build(build_dir)
    rows = select_rows(build.path, selection, _seed(build.path, seed))  # bad input before any call
    with LabelStudio(url, token_env) as server:
        found, created = server.ensure_project(project, labeling_config(build_subcategories(build.path)),
                                               f"synth review push of build {build.name}")
        there = server.row_ids(found["id"])
        new = rows[~rows["id"].isin(there)] if len(rows) else rows
        added = server.import_tasks(found["id"], tasks_for(new, selection=selection, project=project,
                                                           build=build.name))
    return {"url": url, "project": project, "project_id": found["id"], "created": created, "selection": selection,
            "selected": int(len(rows)), "added": added, "tasks": len(there) + added}


# -- pull -----------------------------------------------------------------------------------


def read_json_list(path: Path, what: str) -> list[Any]:
    """A JSON file holding a list; BadInput naming the file (and where the JSON breaks)."""
    text = read_text_file(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: {what} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    if not isinstance(data, list):
        raise BadInput(f"{path}: expected a JSON list of tasks (Label Studio's JSON export), got a "
                       f"{type(data).__name__}")
    return data


def _annotator(value: Any, where: str) -> str:
    """`completed_by`: a user id, or an object with the user's email (or id)."""
    if isinstance(value, dict):
        value = value.get("email") or value.get("id")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise BadInput(f"{where}: completed_by must be a user id or an object with an email, got {value!r}")
    return str(value)


def _time(value: Any, where: str, name: str) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        stamp = pd.Timestamp(value) if isinstance(value, str) else None
    except ValueError:
        stamp = None
    if stamp is None or stamp is pd.NaT:
        raise BadInput(f"{where}: {name} must be a time (ISO 8601), got {value!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _chosen(result: Any, where: str, allowed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The choices of an annotation's `result`, by the labeling config's names, as the columns hold
    them; results of other controls are left out."""
    if not isinstance(result, list):
        raise BadInput(f"{where}: result must be a list, got {type(result).__name__}")
    chosen: dict[str, Any] = {}
    for item in result:
        if not isinstance(item, dict):
            raise BadInput(f"{where}: a result item must be an object, got {type(item).__name__}")
        name = item.get("from_name")
        if name not in allowed or item.get("type", "choices") != "choices":
            continue
        values = (item.get("value") or {}).get("choices") if isinstance(item.get("value"), dict) else None
        if not isinstance(values, list) or len(values) != 1 or values[0] not in allowed[name]:
            raise BadInput(f"{where}: {name} must be one choice of {', '.join(map(str, allowed[name]))}; got {values!r}")
        chosen[name] = allowed[name][values[0]]
    return chosen


def annotations_from(tasks: list[Any], source: str, known: Collection[str], subcategories: Sequence[tuple[str, str]],
                     project: str | None = None) -> pd.DataFrame:
    """Every annotation of a Label Studio export's tasks as rows of reviews/annotations.parquet
    (`ANNOTATION_SCHEMA`), the whole export checked first: a BadInput naming `source` and the task
    (index and row id) where it is wrong, or every task whose row is not in `known` (this build's rows)."""
    allowed = {LABEL: {label: label for label in CORPUS_LABELS},
               QUESTION_HARMFUL: {v: v == YES_NO[0] for v in YES_NO}, REFUSAL: {v: v == YES_NO[0] for v in YES_NO},
               # a subcategory's id (the config's alias) or, from a hand-made config, the name shown
               SUBCATEGORY: {**{name: sub_id for sub_id, name in subcategories}, **{s: s for s, _ in subcategories}}}
    records, unknown, seen = [], [], {}
    for index, task in enumerate(tasks):
        where = f"{source}: task {index}"
        if not isinstance(task, dict):
            raise BadInput(f"{where}: expected an object, got {type(task).__name__}")
        data = task.get("data")
        row_id = data.get("row_id") if isinstance(data, dict) else None
        if not isinstance(row_id, str) or not row_id:
            raise BadInput(f"{where}: no data.row_id (tasks come from `synth review push`)")
        where = f"{where} (row {row_id})"
        if project is not None and data.get("project", project) != project:
            raise BadInput(f"{where}: a task of project {data['project']!r}, not {project!r}")
        if row_id not in known:
            unknown.append(f"task {index} (row {row_id})")
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise BadInput(f"{where}: annotations must be a list, got {type(annotations).__name__}")
        for annotation in annotations:
            if not isinstance(annotation, dict):
                raise BadInput(f"{where}: an annotation must be an object, got {type(annotation).__name__}")
            annotation_id = annotation.get("id")
            if isinstance(annotation_id, bool) or not isinstance(annotation_id, (int, str)) or annotation_id == "":
                raise BadInput(f"{where}: an annotation without an id")
            annotation_id = str(annotation_id)
            at = f"{where}, annotation {annotation_id}"
            if annotation_id in seen:
                raise BadInput(f"{at}: the id is also an annotation of task {seen[annotation_id]}")
            seen[annotation_id] = index
            lead_time = annotation.get("lead_time")
            if lead_time is not None and (isinstance(lead_time, bool) or not isinstance(lead_time, (int, float))):
                raise BadInput(f"{at}: lead_time must be a number of seconds, got {lead_time!r}")
            cancelled = annotation.get("was_cancelled", False)
            if not isinstance(cancelled, bool):
                raise BadInput(f"{at}: was_cancelled must be true or false, got {cancelled!r}")
            chosen = _chosen(annotation.get("result", []), at, allowed)
            records.append({
                "annotation_id": annotation_id, "row_id": row_id,
                "annotator": _annotator(annotation.get("completed_by"), at),
                "created_at": _time(annotation.get("created_at"), at, "created_at"),
                "updated_at": _time(annotation.get("updated_at"), at, "updated_at"),
                "lead_time": None if lead_time is None else float(lead_time), "was_cancelled": cancelled,
                "label": chosen.get(LABEL, ""), "question_harmful": chosen.get(QUESTION_HARMFUL),
                "refusal": chosen.get(REFUSAL), "subcategory": chosen.get(SUBCATEGORY, ""),
                "selection": str(data.get("selection") or ""), "project": str(data.get("project") or ""),
                "source": source})
    if unknown:
        raise BadInput(f"{source}: {len(unknown)} task(s) name rows this build does not have, an export of another "
                       f"project or build? {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    frame = pd.DataFrame(records, columns=ANNOTATION_SCHEMA.names)
    return pa.Table.from_pandas(frame, schema=ANNOTATION_SCHEMA, preserve_index=False).to_pandas()


def _row_sources(build: Path) -> list[tuple[str, list[Path]]]:
    """(stage, files) of the rows a review can label: the final stage's rows (the corpus and the
    tier are made from them) and every stage's hard/ (what filters diverted)."""
    stages = Path(build) / "stages"
    out = [(final_stage(build), parquet_files(stages / final_stage(build) / "rows"))]
    out += [(d.name, parquet_files(d / "hard")) for d in sorted(stages.iterdir()) if (d / "hard").is_dir()]
    return [(stage, files) for stage, files in out if files]


def build_row_ids(build: Path) -> set[str]:
    """The ids of every row a review can label (`_row_sources`)."""
    return {i for _, files in _row_sources(build) for f in files
            for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()}


def reviewed_rows(build: Path, ids: Collection[str]) -> pd.DataFrame:
    """The rows `ids` as the build's stages wrote them (the judges' labels, before any review), as
    rows of reviews/rows.parquet (`ROW_SCHEMA`)."""
    wanted = pa.array(sorted(ids), pa.string())
    parts = []
    for stage, files in _row_sources(build):
        for f in files:
            names = pq.read_schema(f).names
            table = pq.read_table(f, columns=[c for c in ROW_SCHEMA.names if c in names])
            table = table.filter(pc.is_in(table.column("id"), value_set=wanted))
            if table.num_rows:
                parts.append(table.to_pandas().assign(stage=stage))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=ROW_SCHEMA.names)
    frame = frame.drop_duplicates("id")
    defaults = {"history": "", "turns": 1, "controversy": "", "unsafe_score": None}
    for column in ROW_SCHEMA.names:
        if column not in frame:
            frame[column] = defaults.get(column, "")
    frame["history"] = frame["history"].fillna("")
    frame["turns"] = frame["turns"].fillna(1).astype("int64")
    frame["controversy"] = frame["controversy"].fillna("")
    frame["judgements"] = [[{"judge": j["judge"], "verdict": j.get("verdict") or "",
                             "unsafe_score": _plain(j.get("unsafe_score")), "analysis": j.get("analysis") or ""}
                            for j in _plain(js) or []] for js in frame["judgements"]]
    return frame[ROW_SCHEMA.names].sort_values("id").reset_index(drop=True)


def pull(build_dir: Path, source: str | Path, *, project: str | None = None,
         token_env: str = DEFAULT_TOKEN_ENV) -> dict[str, Any]:
    """Record the annotations of a Label Studio project (`source` a server URL, with `project` its
    title) or export file in BUILD/reviews/ (see the module docstring)."""
    build = open_build(build_dir)
    known, subcategories = build_row_ids(build.path), build_subcategories(build.path)
    if is_url(str(source)):
        if not project:
            raise BadInput(f"--from {source}: a server needs --project, the title of its project")
        with LabelStudio(str(source), token_env) as server:
            tasks = server.export(server.project(project)["id"])
        where = f"{str(source).rstrip('/')} project {project!r}"
    else:
        tasks, where = read_json_list(Path(source), "export file"), str(source)
    new = annotations_from(tasks, where, known, subcategories, project)
    directory = build.path / REVIEWS_DIR
    old = read_annotations(directory)
    merged = merge_annotations(old, new)
    before = dict(zip(old["annotation_id"], old["updated_at"]))
    after = dict(zip(merged["annotation_id"], merged["updated_at"]))
    added = sum(1 for a in after if a not in before)
    updated = sum(1 for a, t in after.items() if a in before and not _same_time(before[a], t))
    rows = read_reviewed_rows(directory)
    missing = set(merged["row_id"]) - set(rows["id"])
    if missing:  # the rows first: annotations.parquet never names a row rows.parquet lacks
        write_reviews(directory, ROWS_FILE, merge_rows(rows, reviewed_rows(build.path, missing)), ROW_SCHEMA)
    if added or updated:
        write_reviews(directory, ANNOTATIONS_FILE, merged, ANNOTATION_SCHEMA)
    return {"source": where, "annotations": int(len(new)), "added": added, "updated": updated,
            "unchanged": int(len(new)) - added - updated, "recorded": int(len(merged)),
            "rows": int(merged["row_id"].nunique()), "reviews": str(directory)}


def _same_time(a: Any, b: Any) -> bool:
    return (pd.isna(a) and pd.isna(b)) or (not pd.isna(a) and not pd.isna(b) and a == b)
