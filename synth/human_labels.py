"""People's labels in a build: `reviews/`, the label a row gets from them, and `label_source`.

`synth review pull` (synth/review.py) writes `<build>/reviews/`:
- `annotations.parquet`: one row per annotation (`ANNOTATION_SCHEMA`): its id, the row it labels,
  the annotator, when, how long it took (`lead_time`, seconds), whether it was cancelled (skipped),
  and the choices: `label` (安全 / 不安全 / 有争议, "" for none), `question_harmful` and `refusal`
  (True / False, null for none), `subcategory` (a subcategory id, "" for none); `selection` says
  how `synth review push` chose the row (controversial, hard, sample:N or a query).
- `rows.parquet`: the rows those annotations label, as the build's stages wrote them
  (`ROW_SCHEMA`): the question, the answer, the earlier turns of a dialogue (`history`), the
  judges' label and each judge's verdict. The agreement figures and `synth eval-judges
  BUILD/reviews` read only these two files, so reviews/ stands on its own.

They are data, not cache: no build deletes reviews/ (`--fresh` deletes stages/ and cache/ only),
and every export of the build, the one at the end of a build and `synth export BUILD`, applies them.

People's label of a row (`people_labels`): each annotator's latest annotation with a label that was
not cancelled counts once; the label most annotators gave wins, and a tie is 有争议.

What a row's label becomes (`settle`), with `label_source`:
- no one labelled it: the judges' label, `judges`;
- people gave the judges' label: that label, `judges+human-agreed` (the controversial tier's
  rows too, when people also leave them 有争议);
- people gave another label, 安全 or 不安全: theirs, `human` (a row of the controversial tier
  leaves it and joins the corpus);
- people left a row the judges agreed on 有争议: it goes to the controversial tier, `human`,
  with the reason `PEOPLE_UNDECIDED`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import BadInput
from synth.output_parsing import CONTROVERSIAL, CORPUS_LABELS, LABELS

REVIEWS_DIR = "reviews"  # in the build directory
ANNOTATIONS_FILE = "annotations.parquet"
ROWS_FILE = "rows.parquet"

JUDGES, HUMAN, AGREED = "judges", "human", "judges+human-agreed"
LABEL_SOURCES = (JUDGES, HUMAN, AGREED)  # `label_source` of a corpus row
PEOPLE_UNDECIDED = "people_undecided"  # `controversy` of an agreed row people left 有争议
REVIEW_STAGE = "review"  # `hard_stage` of such a row in hard/

_TIME = pa.timestamp("us", tz="UTC")
ANNOTATION_SCHEMA = pa.schema([
    ("annotation_id", pa.string()), ("row_id", pa.string()), ("annotator", pa.string()),
    ("created_at", _TIME), ("updated_at", _TIME), ("lead_time", pa.float64()), ("was_cancelled", pa.bool_()),
    ("label", pa.string()), ("question_harmful", pa.bool_()), ("refusal", pa.bool_()), ("subcategory", pa.string()),
    ("selection", pa.string()), ("project", pa.string()), ("source", pa.string()),
])
JUDGEMENT_TYPE = pa.list_(pa.struct([("judge", pa.string()), ("verdict", pa.string()),
                                     ("unsafe_score", pa.float64()), ("analysis", pa.string())]))
ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("scenario", pa.string()), ("scenario_name", pa.string()), ("subcategory", pa.string()),
    ("subcategory_name", pa.string()), ("kind", pa.string()), ("question", pa.string()), ("response", pa.string()),
    ("history", pa.string()), ("turns", pa.int64()), ("label", pa.string()), ("controversy", pa.string()),
    ("unsafe_score", pa.float64()), ("judgements", JUDGEMENT_TYPE),
    ("stage", pa.string()),  # the stage whose output the row was read from (the final one, or the one that diverted it to hard/)
])


def read_reviews(directory: Path, name: str, schema: pa.Schema) -> pd.DataFrame:
    """One file of a reviews directory as a frame with `schema`'s columns (empty when there is none);
    an unreadable file is a BadInput naming it."""
    path = Path(directory) / name
    if not path.exists():
        return schema.empty_table().to_pandas()
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise BadInput(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    missing = [c for c in schema.names if c not in table.column_names]
    if missing:
        raise BadInput(f"{path}: not written by synth review pull (no column {', '.join(missing)})")
    return table.select(schema.names).to_pandas()


def read_annotations(directory: Path) -> pd.DataFrame:
    return read_reviews(directory, ANNOTATIONS_FILE, ANNOTATION_SCHEMA)


def read_reviewed_rows(directory: Path) -> pd.DataFrame:
    return read_reviews(directory, ROWS_FILE, ROW_SCHEMA)


def write_reviews(directory: Path, name: str, frame: pd.DataFrame, schema: pa.Schema) -> None:
    """`frame` as `directory/name`, whole or not at all (a temporary file renamed over it)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False).replace_schema_metadata(None)
    tmp = directory / f".{name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, directory / name)


def merge_annotations(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """`old` with `new` added by annotation id: an id already there is replaced only by a later
    `updated_at` (an annotation edited since), so merging the same annotations again changes nothing.
    Sorted by row id, then annotation id."""
    if new.empty or old.empty:
        both = (old if new.empty else new).copy()
    else:
        both = pd.concat([old, new], ignore_index=True)  # old first: kept where the update times tie
    both = both.assign(_order=range(len(both))).sort_values(
        ["annotation_id", "updated_at", "_order"], ascending=[True, False, True], na_position="last", kind="stable")
    both = both.drop_duplicates("annotation_id", keep="first").drop(columns="_order")
    return both.sort_values(["row_id", "annotation_id"]).reset_index(drop=True)


def merge_rows(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """The reviewed rows of `old` and `new`, each id once (the one already recorded), sorted by id."""
    both = pd.concat([old, new], ignore_index=True).drop_duplicates("id", keep="first")
    return both.sort_values("id").reset_index(drop=True)


def majority(labels: Iterable[str]) -> str:
    """The label most of `labels` are; 有争议 when the most given labels tie; "" for none."""
    counts = Counter(label for label in labels if label)
    if not counts:
        return ""
    (first, n), *rest = counts.most_common()
    return CONTROVERSIAL if rest and rest[0][1] == n else first


def votes(annotations: pd.DataFrame) -> pd.DataFrame:
    """The annotations that count (`row_id`, `annotator`, `label`, `selection`): of each annotator on
    each row, the latest that was not cancelled and has a label."""
    counted = annotations[~annotations["was_cancelled"].fillna(False).astype(bool)
                          & annotations["label"].isin(CORPUS_LABELS)]
    counted = counted.sort_values(["row_id", "annotator", "updated_at", "annotation_id"], na_position="first")
    return counted.drop_duplicates(["row_id", "annotator"], keep="last")[["row_id", "annotator", "label", "selection"]]


def people_labels(annotations: pd.DataFrame) -> pd.DataFrame:
    """Per row people labelled: `row_id`, `label` (their majority, see the module docstring),
    `annotators` (how many counted) and `selection` (how the row was pushed); sorted by row id."""
    counted = votes(annotations)
    rows = [{"row_id": row_id, "label": majority(group["label"]), "annotators": int(len(group)),
             "selection": next((s for s in group["selection"] if s), "")}
            for row_id, group in counted.groupby("row_id", sort=True)]
    return pd.DataFrame(rows, columns=["row_id", "label", "annotators", "selection"])


def settle(judges_label: str, controversy: str, people: str | None) -> tuple[str, str, str]:
    """(label, label_source, controversy) of a row whose judges gave `judges_label` (安全, 不安全 or
    有争议 with the reason `controversy`) and people `people` (their majority; None or "": nobody)."""
    if not people:
        return judges_label, JUDGES, controversy
    if people == judges_label:
        return judges_label, AGREED, controversy
    if people in LABELS:
        return people, HUMAN, ""
    return CONTROVERSIAL, HUMAN, PEOPLE_UNDECIDED


def apply_people(rows: pd.DataFrame, people: Mapping[str, str]) -> pd.DataFrame:
    """`rows` (`id`, `label`, `controversy`) with people's labels settled in (`settle`): `label`,
    `controversy` and `label_source` as settled, the judges' label kept as `judges_label`."""
    settled = [settle(label, controversy, people.get(row_id))
               for row_id, label, controversy in zip(rows["id"], rows["label"], rows["controversy"].fillna(""))]
    label, source, controversy = zip(*settled) if settled else ((), (), ())
    return rows.assign(judges_label=rows["label"], label=list(label), label_source=list(source),
                       controversy=list(controversy))


def people_by_row(directory: Path) -> dict[str, str]:
    """Row id -> people's label, of the annotations in a reviews directory (none: {})."""
    people = people_labels(read_annotations(directory))
    return dict(zip(people["row_id"], people["label"]))


def review_gold(directory: Path) -> dict[str, dict[str, Any]]:
    """A reviews directory as judge gold (synth.gold's format, by id): every row people settled
    (安全 / 不安全) with its question, answer, the earlier turns of a dialogue (`history`) and
    scenario and subcategory names; a BadInput when there is none."""
    directory = Path(directory)
    if not (directory / ANNOTATIONS_FILE).exists():
        raise BadInput(f"{directory}: no {ANNOTATIONS_FILE}: not a reviews directory "
                       "(run `synth review pull BUILD --from EXPORT.json` first)")
    rows = read_reviewed_rows(directory).set_index("id", drop=False)
    gold: dict[str, dict[str, Any]] = {}
    for row_id, label in people_by_row(directory).items():
        if label not in LABELS or row_id not in rows.index:
            continue
        row = rows.loc[row_id]
        gold[row_id] = {"id": row_id, "question": row["question"], "response": row["response"], "label": label,
                        "category_name": row["scenario_name"], "sub_category_name": row["subcategory_name"],
                        "history": row["history"] or "", "source": "reviews"}
    if not gold:
        raise BadInput(f"{directory}: people settled no row (安全 or 不安全) yet: nothing to measure the judges on")
    return gold
