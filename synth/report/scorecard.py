"""The scorecard: per template, subcategory and kind, what the generator was asked for and what
came of it, weakest first. Teams read it to find the templates to fix.

A row is keyed by the *request*: the requested kind and subcategory (`requested_kind`,
`requested_subcategory`, which judge_questions keeps when its routing rewrites `kind` and
`subcategory` to the judged content; `kind` and `subcategory` on rows from before it), and the
scenario that subcategory belongs to (the elements rows). So a question the judge moved to
another subcategory still counts against the template that wrote it. Per row:

- questions asked (generator calls, the elements rows, × `questions_per_call` of the recorded
  config) and written (the queries stage's rows and rejects: a call that gave no question is
  one reject);
- losses: the rejects of every stage whose rows are still questions (no answer yet: the
  generator's parse failures, each question filter, near-duplicates, the question judge), per
  stage and reason, and their sum;
- distinct-2 of the questions written;
- the shares of the questions the question judge read that it judged as asked (harmful-or-not
  as requested, about the requested subcategory: `judged_on_topic` of the request) and
  judged harmful; null where no question judge ran;
- of the labelled pairs (the annotate stage's rows): responder refusals (the judge field
  `refusal` true; null where the judges were not asked it), unsafe yield (the share labelled
  不安全 of those labelled 安全/不安全) and judge disagreement (the share the judges split on);
- rows in the final corpus (null where there is none: `synth templates try` exports nothing).

Weakest first: by the share judged on topic, then by unsafe yield; a share that could not be
measured (no question of the template got that far) counts as the weakest. Read from the
build directory alone, like the rest of the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow.parquet as pq
import yaml

from synth.filters.chinese import distinct_n
from synth.output_parsing import CONTROVERSIAL, LABELS, UNSAFE
from synth.report.readers import read_columns, requested, share
from synth.scoring import DISAGREE
from synth.stream_io import parquet_files

# the stages the scorecard reads by what they hold: the generator's calls, its questions, the
# question judge's verdicts, the labelled pairs
CALLS, QUESTIONS, QUESTION_JUDGE, PAIRS = "elements", "queries", "judge_questions", "annotate"
KEY = ["scenario", "subcategory", "kind"]
# what a row's request is read from (see `requested`)
_REQUEST_COLUMNS = ("scenario", "subcategory", "kind", "requested_subcategory", "requested_kind")


def scorecard(build_dir: Path, manifest: dict[str, Any], questions_per_call: int | None = None
              ) -> list[dict[str, Any]]:
    """One row per requested scenario × subcategory × kind (see the module), weakest first.
    `questions_per_call`: default, the recorded config's (inputs/config.yaml)."""
    stages = Path(build_dir) / "stages"
    calls = read_columns(stages / CALLS / "rows", [*KEY, "scenario_name", "subcategory_name", "template_id"])
    if calls.empty:
        return []
    scenario_of = dict(zip(calls["subcategory"], calls["scenario"]))

    def keyed(*paths: Path, columns: Sequence[str] = ()) -> pd.DataFrame:
        """`columns` of the rows under `paths`, with the request they answer as KEY."""
        frames = [read_columns(p, [*_REQUEST_COLUMNS, *columns]) for p in paths]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=[*KEY, *columns])
        frame = pd.concat(frames, ignore_index=True)
        subcategory = requested(frame, "subcategory")
        return frame.reindex(columns=list(columns)).assign(
            scenario=subcategory.map(scenario_of).fillna(frame["scenario"]), subcategory=subcategory,
            kind=requested(frame, "kind"))

    per_call = questions_per_call if questions_per_call is not None else _recorded_questions_per_call(build_dir)
    written = keyed(stages / QUESTIONS / "rows", stages / QUESTIONS / "rejects")
    texts = keyed(stages / QUESTIONS / "rows", columns=["question"])
    judged = keyed(stages / QUESTION_JUDGE / "rows", stages / QUESTION_JUDGE / "rejects",
                   columns=["question_harmful", "judged_subcategory"])
    pairs = keyed(stages / PAIRS / "rows", columns=["label", "controversy", "refusal"])
    corpus_dir = Path(build_dir) / "corpus" / "data"
    corpus = keyed(corpus_dir) if corpus_dir.is_dir() else None
    losses = _losses(stages, manifest, keyed)

    judge_ran = bool(judged["question_harmful"].notna().any())
    judged = judged.assign(on_topic=_on_request(judged), harmful=judged["question_harmful"].eq(True))
    refusal_asked = bool(pairs["refusal"].notna().any())
    disagreed = (pairs["controversy"].eq(DISAGREE) if pairs["controversy"].notna().any()
                 else pairs["label"].eq(CONTROVERSIAL))
    pairs = pairs.assign(disagreed=disagreed, refused=pairs["refusal"].eq(True),
                         labelled=pairs["label"].isin(LABELS), unsafe=pairs["label"].eq(UNSAFE))

    def by_key(frame: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
        return {k: g for k, g in frame.groupby(KEY, sort=False)} if len(frame) else {}

    written, texts, judged, pairs = (by_key(f) for f in (written, texts, judged, pairs))
    corpus_rows = corpus.groupby(KEY).size() if corpus is not None and len(corpus) else pd.Series(dtype=int)
    empty = pd.DataFrame()
    out = []
    for key, g in calls.groupby(KEY, sort=True):
        first = g.iloc[0]
        j, p = judged.get(key, empty), pairs.get(key, empty)
        lost = {stage: by[key] for stage, by in losses.items() if key in by}
        labelled = int(p["labelled"].sum()) if len(p) else 0
        out.append({
            "scenario": key[0], "scenario_name": first["scenario_name"], "subcategory": key[1],
            "subcategory_name": first["subcategory_name"], "kind": key[2], "template": first["template_id"],
            "questions_asked": len(g) * per_call if per_call is not None else None,
            "questions_written": len(written.get(key, empty)),
            "losses": lost, "lost": sum(n for reasons in lost.values() for n in reasons.values()),
            "distinct_2": round(distinct_n(texts[key]["question"].astype(str), 2), 4) if key in texts else None,
            "judged": len(j),
            "judged_on_topic": share(int(j["on_topic"].sum()), len(j)) if judge_ran and len(j) else None,
            "judged_harmful": share(int(j["harmful"].sum()), len(j)) if judge_ran and len(j) else None,
            "pairs": len(p),
            "refusals": int(p["refused"].sum()) if refusal_asked else None,
            "unsafe_yield": share(int(p["unsafe"].sum()), labelled) if labelled else None,
            "judge_disagreement": share(int(p["disagreed"].sum()), len(p)) if len(p) else None,
            "corpus_rows": int(corpus_rows.get(key, 0)) if corpus is not None else None,
        })
    return sorted(out, key=_weakest_first)


def _on_request(judged: pd.DataFrame) -> list[bool]:
    """Per question, `judged_on_topic` against what was asked for (KEY holds the request here),
    not against the kind and subcategory routing gave it."""
    from synth.stages.question_judge import judged_on_topic

    plain = judged.astype(object).where(judged.notna(), None)  # judged_on_topic reads None as "no verdict"
    return [judged_on_topic(r) for r in plain.to_dict("records")]


def _losses(stages: Path, manifest: dict[str, Any], keyed) -> dict[str, dict[tuple, dict[str, int]]]:
    """stage → request key → {reason: rows}, for every stage of the manifest whose rejects are
    still questions (no `response` column: before any answer), in the manifest's order."""
    out: dict[str, dict[tuple, dict[str, int]]] = {}
    for record in manifest.get("stages", []):
        rejects = stages / record["name"] / "rejects"
        if not record.get("rejected") or _has_column(rejects, "response"):
            continue
        frame = keyed(rejects, columns=["reject_reason"])
        out[record["name"]] = {key: {str(r): int(n) for r, n in g["reject_reason"].value_counts().sort_index().items()}
                               for key, g in frame.groupby(KEY, sort=False)}
    return out


def _has_column(path: Path, column: str) -> bool:
    return any(column in pq.read_schema(f).names for f in parquet_files(path))


def _recorded_questions_per_call(build_dir: Path) -> int | None:
    """`generation.questions_per_call` of the config the build recorded (None if it recorded none)."""
    try:
        recorded = yaml.safe_load((Path(build_dir) / "inputs" / "config.yaml").read_text(encoding="utf-8")) or {}
        return int(recorded["generation"]["questions_per_call"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _weakest_first(row: dict[str, Any]) -> tuple:
    """Judged on topic, then unsafe yield, ascending; not measured before any measured value."""
    def measured(value: float | None) -> tuple[bool, float]:
        return (value is not None, value or 0.0)

    return (*measured(row["judged_on_topic"]), *measured(row["unsafe_yield"]), row["scenario"], row["subcategory"],
            row["kind"])
