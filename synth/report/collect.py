"""The numbers of a build report, read from the build directory alone.

Sources: `manifest.json` (per-stage counts, wall time, export counts), the stage
outputs under `stages/` (for what the manifest does not break down: judge
agreement, refusals, diversity, tokens), the exports (`corpus/`, `hard/`,
`rejects/`), the recorded config (`inputs/config.yaml`: which evaluation sets
were checked) and people's labels (`reviews/`: how far judges and people agree,
synth/agreement.py). Everything returned is plain JSON-able data; `report.json` is this
dict, and the tests check it against the manifest and the exported files.

Each section reads only the columns it needs (texts only where it reads them: lengths
come from one text column at a time, refusals and diversity stream theirs in batches),
so the report of a large build does not load its corpus.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from synth.agreement import review_figures
from synth.filters.chinese import distinct_n
from synth.human_labels import REVIEWS_DIR, read_annotations, read_reviewed_rows
from synth.filters.refusal import is_refusal
from synth.output_parsing import CONTROVERSIAL, LABELS
from synth.report.readers import read_columns, read_texts, requested, share
from synth.report.scorecard import scorecard
from synth.stream_io import parquet_files

CORPUS_KEYS = ("scenario", "scenario_name", "subcategory", "subcategory_name", "label", "kind", "attack")
# what coverage by content reads besides CORPUS_KEYS: the request and the question judge's verdicts
CONTENT_KEYS = ("requested_kind", "requested_subcategory", "question_harmful", "judged_subcategory")
# what judge agreement reads of `judgements`: not the analyses, not the raw outputs
JUDGEMENT_FIELDS = ("judgements.judge", "judgements.verdict", "judgements.error")


def _records(value: Any) -> list[dict[str, Any]]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    return [dict(v) for v in value if v is not None]


def _lengths(n: pd.Series) -> dict[str, Any]:
    """Summary of lengths in characters."""
    if n.empty:
        return {"n": 0}
    return {"n": int(len(n)), "mean": round(float(n.mean()), 1), "p10": int(n.quantile(0.1)),
            "p50": int(n.quantile(0.5)), "p90": int(n.quantile(0.9)), "max": int(n.max()), "min": int(n.min())}


def _corpus_files(build: Path) -> list[Path]:
    return parquet_files(Path(build) / "corpus" / "data")


def load_corpus_files(build: Path, columns: Sequence[str] = CORPUS_KEYS) -> pd.DataFrame:
    """`columns` of corpus/ (every shard, in file order) and `split` from the file name."""
    parts = [read_columns(f, columns).assign(split=f.name.split("-")[0]) for f in _corpus_files(build)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def load_tier(build: Path, columns: Sequence[str] = (*CORPUS_KEYS, "controversy")) -> pd.DataFrame:
    """`columns` of the controversial tier (corpus/strict/, every shard) with its own label, and `split`."""
    parts = [read_columns(f, columns).assign(split=f.name.split("-")[0], label=CONTROVERSIAL)
             for f in parquet_files(Path(build) / "corpus" / "strict")]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*columns, "split"])


def corpus_lengths(build: Path) -> pd.DataFrame:
    """label, and the length in characters of question and response, per corpus row (one column read at a time)."""
    frame = load_corpus_files(build, ["label"])
    for field in ("question", "response"):
        chunks = [pc.utf8_length(pq.read_table(f, columns=[field]).column(field).fill_null("None"))
                  for f in _corpus_files(build)]
        frame[field] = pd.Series([n for c in chunks for n in c.to_pylist()], dtype="int64")
    return frame


def funnel(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage (rows in/out, created, every reject reason, diverted), then balance and export."""
    rows = []
    for s in manifest.get("stages", []):
        rows.append({"stage": s["name"], "rows_in": s["rows_in"], "rows_out": s["rows_out"],
                     "created": s.get("created", 0), "rejected": dict(s.get("rejected", {})),
                     # rows pending a request that failed transiently (sent again by the next run)
                     "diverted": {**s.get("diverted", {}), **({"pending": s["pending"]} if s.get("pending") else {})},
                     "seconds": s.get("seconds", 0.0),
                     "reused": s.get("reused", False)})
    export = manifest.get("export", {})
    balance = export.get("balance")
    if balance:
        # the controversial tier leaves the agreed corpus here (not balanced; configs strict/loose, a copy in hard/)
        tier = (export.get("controversial") or {}).get("rows", 0)
        rows.append({"stage": "balance", "rows_in": balance["rows_in"] + tier, "rows_out": balance["rows_out"],
                     "created": 0, "rejected": {k: v for k, v in balance["cut"].items() if v},
                     "diverted": {"controversial": tier} if tier else {}, "seconds": 0.0, "reused": False})
    rows.append({"stage": "export", "rows_in": export.get("corpus_rows", 0), "rows_out": export.get("corpus_rows", 0),
                 "created": 0, "rejected": {}, "diverted": {}, "seconds": 0.0, "reused": False,
                 "train": export.get("train_rows", 0), "validation": export.get("validation_rows", 0)})
    return rows


def taxonomy(build: Path, corpus: pd.DataFrame) -> pd.DataFrame:
    """Every (scenario, subcategory) the build sampled elements for (so empty ones show), with names."""
    cols = ["scenario", "scenario_name", "subcategory", "subcategory_name"]
    elements = read_columns(build / "stages" / "elements" / "rows", cols)
    frames = [f[cols] for f in (elements, corpus) if not f.empty and set(cols) <= set(f.columns)]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames).drop_duplicates(["scenario", "subcategory"]).sort_values(["scenario", "subcategory"])


def coverage(build: Path, corpus: pd.DataFrame, hard: pd.DataFrame, tier: pd.DataFrame | None = None
             ) -> list[dict[str, Any]]:
    """Per subcategory: corpus rows per label, the controversial tier's rows (有争议), the hard pool's."""
    out = []
    tier = tier if tier is not None and len(tier) else None
    both = pd.concat([corpus, tier[corpus.columns.intersection(tier.columns)]]) if tier is not None else corpus
    tax = taxonomy(build, corpus)
    counts = both.groupby(["scenario", "subcategory", "label"]).size() if len(both) else pd.Series(dtype=int)
    hard_counts = hard.groupby(["scenario", "subcategory"]).size() if len(hard) else pd.Series(dtype=int)
    for r in tax.to_dict("records"):
        row = {**r}
        for label in (*LABELS, CONTROVERSIAL):
            row[label] = int(counts.get((r["scenario"], r["subcategory"], label), 0))
        row["hard"] = int(hard_counts.get((r["scenario"], r["subcategory"]), 0))
        row["missing"] = [label for label in LABELS if row[label] == 0]
        out.append(row)
    return out


def coverage_by_content(build: Path, rows: pd.DataFrame) -> dict[str, Any] | None:
    """Per subcategory the build asked for (its elements) × kind, the rows of `rows` (the corpus)
    by what the generator was asked for (metadata: `requested`) beside those whose content the
    question judge confirmed (content: judged harmful-or-not as their kind says and about their
    subcategory, `judged_on_topic`); the headline, subcategories with a harmful-kind row by each;
    and the confirmed rows that routing moved to a subcategory the build did not ask for. The
    two differ where the generator wrote something else than it was asked for. None where no
    question judge ran (no row has a verdict): the request is then all the build knows."""
    if rows.empty or "question_harmful" not in rows or rows["question_harmful"].isna().all():
        return None
    from synth.stages.generation import KINDS
    from synth.stages.question_judge import judged_on_topic

    tax = taxonomy(build, pd.DataFrame())  # the elements' subcategories only: what was asked for
    plain = rows.astype(object).where(rows.notna(), None)  # judged_on_topic reads None for "no verdict"
    on_topic = rows[[judged_on_topic(r) for r in plain.to_dict("records")]]
    confirmed = on_topic.groupby(["subcategory", "kind"]).size()
    asked = pd.DataFrame({"subcategory": requested(rows, "subcategory"), "kind": requested(rows, "kind")})
    asked = asked.groupby(["subcategory", "kind"]).size()
    by_subcategory = []
    for t in tax.to_dict("records"):
        row = {k: t[k] for k in ("scenario", "scenario_name", "subcategory", "subcategory_name")}
        for kind in KINDS:
            row[f"metadata_{kind}"] = int(asked.get((t["subcategory"], kind), 0))
            row[f"content_{kind}"] = int(confirmed.get((t["subcategory"], kind), 0))
        by_subcategory.append(row)
    routing = recorded_config(build).get("judge_questions")
    return {"subcategories": len(by_subcategory),
            # the question probe took the request as evidence at this prior (None: its topic head alone)
            "request_prior": routing.get("request_prior") if isinstance(routing, dict) else None,
            "metadata_harmful": sum(1 for r in by_subcategory if r["metadata_harmful"]),
            "content_harmful": sum(1 for r in by_subcategory if r["content_harmful"]),
            "content_elsewhere": int((~on_topic["subcategory"].isin(tax["subcategory"])).sum()),
            "by_subcategory": by_subcategory}


def judge_agreement(build: Path) -> dict[str, Any]:
    """Agreement per scenario (agreed / (agreed + disagreed)), per judge pair, failures, per-judge unsafe rate."""
    annotate = build / "stages" / "annotate"
    columns = ["scenario", "scenario_name", *JUDGEMENT_FIELDS]
    labelled = read_columns(annotate / "rows", [*columns, "label"])
    outcome = (labelled["label"] == CONTROVERSIAL).map({True: "disagree", False: "agree"}) if len(labelled) else None
    agreed = labelled.assign(outcome=outcome) if len(labelled) else labelled
    disagreed = read_columns(annotate / "hard", columns).assign(outcome="disagree")  # builds before the tier
    rejects = read_columns(annotate / "rejects", [*columns, "reject_reason"])
    failed = rejects[rejects["reject_reason"].astype(str).str.startswith("judge_failed")] if len(rejects) else rejects
    failed = failed.assign(outcome="failed") if len(failed) else failed
    frames = [f for f in (agreed, disagreed, failed) if len(f)]
    if not frames:
        return {"by_scenario": {}, "pairs": [], "failures": {}, "per_judge": {}, "overall": None}
    df = pd.concat(frames, ignore_index=True)
    by_scenario = {}
    for scenario, g in df.groupby("scenario", sort=True):
        a, d, f = int((g.outcome == "agree").sum()), int((g.outcome == "disagree").sum()), int((g.outcome == "failed").sum())
        name = str(g["scenario_name"].iloc[0]) if "scenario_name" in g else scenario
        by_scenario[scenario] = {"name": name, "agree": a, "disagree": d, "failed": f, "rate": share(a, a + d)}
    a, d = int((df.outcome == "agree").sum()), int((df.outcome == "disagree").sum())
    pairs: dict[tuple[str, str], dict[str, int]] = {}
    per_judge: dict[str, dict[str, int]] = {}
    for js in df["judgements"].map(_records):
        valid = {j["judge"]: j["verdict"] for j in js if j.get("verdict") in LABELS and not j.get("error")}
        for j in js:
            pj = per_judge.setdefault(j["judge"], {"verdicts": 0, "unsafe": 0, "failed": 0})
            if j["judge"] in valid:
                pj["verdicts"] += 1
                pj["unsafe"] += valid[j["judge"]] == "不安全"
            else:
                pj["failed"] += 1
        for x, y in itertools.combinations(sorted(valid), 2):
            p = pairs.setdefault((x, y), {"n": 0, "agree": 0, "both_unsafe": 0, "x_unsafe": 0, "y_unsafe": 0})
            p["n"] += 1
            p["agree"] += valid[x] == valid[y]
            p["both_unsafe"] += valid[x] == valid[y] == "不安全"
            p["x_unsafe"] += valid[x] == "不安全"
            p["y_unsafe"] += valid[y] == "不安全"
    pair_rows = []
    for (x, y), p in sorted(pairs.items()):
        n = p["n"]
        po = p["agree"] / n
        px, py = p["x_unsafe"] / n, p["y_unsafe"] / n
        pe = px * py + (1 - px) * (1 - py)
        kappa = (po - pe) / (1 - pe) if pe < 1 else None
        pair_rows.append({"judges": f"{x} × {y}", "n": n, "agree": p["agree"], "controversial": n - p["agree"],
                          "x_unsafe_y_safe": p["x_unsafe"] - p["both_unsafe"],
                          "x_safe_y_unsafe": p["y_unsafe"] - p["both_unsafe"], "rate": round(po, 4),
                          "kappa": round(kappa, 4) if kappa is not None else None})
    failures: dict[str, int] = {}
    if len(failed):
        for reason, n in failed["reject_reason"].astype(str).value_counts().sort_index().items():
            failures[reason] = int(n)
    return {
        "overall": {"agree": a, "disagree": d, "failed": int(len(failed)), "rate": share(a, a + d)},
        "by_scenario": by_scenario, "pairs": pair_rows, "failures": failures,
        "per_judge": {k: {**v, "unsafe_rate": share(v["unsafe"], v["verdicts"])} for k, v in sorted(per_judge.items())},
    }


def reviews(build: Path, export: dict[str, Any]) -> dict[str, Any] | None:
    """How far judges and people agree on the rows people labelled (synth.agreement.review_figures),
    with what the export did with their labels (manifest `export.reviewed`); None without reviews."""
    directory = build / REVIEWS_DIR
    figures = review_figures(read_annotations(directory), read_reviewed_rows(directory))
    if figures is None:
        return None
    return {**figures, "export": export.get("reviewed")}


def refusals(build: Path) -> dict[str, Any]:
    """Refusal rate per responder over every answer it gave (respond stage output), by question kind."""
    rows = build / "stages" / "respond" / "rows"
    answers = read_columns(rows, ["responder", "kind"])
    if answers.empty:
        return {}
    answers = answers.assign(refusal=[is_refusal(text) for text in read_texts(rows, "response")])
    out = {}
    for responder, g in answers.groupby("responder", sort=True):
        row = {"answers": int(len(g)), "refusals": int(g["refusal"].sum()), "rate": share(int(g["refusal"].sum()), len(g))}
        for kind, k in g.groupby("kind", sort=True):
            row[f"rate_{kind}"] = share(int(k["refusal"].sum()), len(k))
        out[str(responder)] = row
    return out


def unsafe_yield(build: Path) -> dict[str, Any]:
    """How much unsafe material each responder gives, and on which scenarios: of the answers
    both judges labelled alike (annotate's output), how many are 不安全 and how many are refusals
    (by the refusal lexicon), with the disagreements (label 有争议) beside them. A responder
    that refuses almost everything feeds the 安全 class only; add a base model as a responder."""
    stage = build / "stages" / "annotate"
    rows = read_columns(stage / "rows", ["responder", "scenario", "kind", "label"])
    if rows.empty:
        return {}
    rows = rows.assign(refusal=[is_refusal(text) for text in read_texts(stage / "rows", "response")])
    labelled = rows[rows["label"].isin(LABELS)]
    old_hard = read_columns(stage / "hard", ["responder", "scenario"])  # builds before the controversial tier
    disputed = pd.concat([rows.loc[rows["label"] == CONTROVERSIAL, ["responder", "scenario"]], old_hard])

    def summary(g: pd.DataFrame, disagreed: int) -> dict[str, Any]:
        unsafe = int((g["label"] == LABELS[1]).sum())
        harmful = g[g["kind"] == "harmful"]
        return {"labelled": int(len(g)), "unsafe": unsafe, "unsafe_rate": share(unsafe, len(g)),
                "unsafe_rate_harmful": share(int((harmful["label"] == LABELS[1]).sum()), len(harmful)),
                "refusals": int(g["refusal"].sum()), "refusal_rate": share(int(g["refusal"].sum()), len(g)),
                "disagreed": disagreed}

    out: dict[str, Any] = {}
    for key in ("responder", "scenario"):
        counts = disputed[key].value_counts() if key in disputed else pd.Series(dtype=int)
        out[f"by_{key}"] = {str(k): summary(g, int(counts.get(k, 0))) for k, g in labelled.groupby(key, sort=True)}
    return out


def dialogues(build: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Per dialogue strategy × scenario, the conversations (rows of two user turns or more, issue 31)
    among the final stage's rows, what the exports read, before balancing: how many, their mean
    number of user turns, the share 不安全 of those the judges agreed on (unsafe yield), the share
    the judges left 有争议, the share whose last answer the judges found a refusal (the judge
    field `refusal`, of the rows with a value; None where the build did not ask for it), and the
    mean turn whose answer was first labelled 不安全, of the conversations with one (annotate.every_turn;
    None without it). Empty
    where the rows have no `turns` / `strategy` (a build from before the converse stage) or no
    conversation."""
    stages = manifest.get("stages") or []
    if not stages:
        return []
    rows = read_columns(build / "stages" / stages[-1]["name"] / "rows",
                        ["strategy", "scenario", "turns", "label", "refusal", "first_unsafe_turn"])
    if rows.empty or not {"strategy", "turns"} <= set(rows.columns):
        return []
    rows = rows[rows["turns"].fillna(1) >= 2]
    out = []
    for (strategy, scenario), g in rows.groupby(["strategy", "scenario"], sort=True):
        agreed = g[g["label"].isin(LABELS)]
        refusal = g["refusal"].dropna() if "refusal" in g else pd.Series(dtype=bool)
        first = g["first_unsafe_turn"].dropna() if "first_unsafe_turn" in g else pd.Series(dtype="int64")
        first = first[first > 0]  # annotate.every_turn: the conversations with an answer labelled 不安全
        out.append({"strategy": str(strategy), "scenario": str(scenario), "conversations": int(len(g)),
                    "mean_turns": round(float(g["turns"].mean()), 2),
                    "unsafe_yield": share(int((agreed["label"] == LABELS[1]).sum()), len(agreed)),
                    "controversial_share": share(int((g["label"] == CONTROVERSIAL).sum()), len(g)),
                    "refusal_share": share(int(refusal.astype(bool).sum()), len(refusal)),
                    "first_unsafe_turn": round(float(first.mean()), 2) if len(first) else None})
    return out


def dedup_rates(manifest: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for s in manifest.get("stages", []):
        if not s["name"].startswith("dedup"):
            continue
        removed = sum(s["rejected"].values())
        out[s["name"]] = {"rows_in": s["rows_in"], "removed": removed,
                          "exact": s["rejected"].get("exact_duplicate", 0), "near": s["rejected"].get("near_duplicate", 0),
                          "rate": share(removed, s["rows_in"])}
    return out


def recorded_config(build: Path) -> dict[str, Any]:
    """The config the build recorded (inputs/config.yaml), {} where it is missing or unreadable."""
    try:
        recorded = yaml.safe_load((build / "inputs" / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def decontamination(build: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Rows the decontaminate stage removed, per evaluation set: its `contaminated: <set>` reject
    counts, with every set of the recorded config (inputs/config.yaml) listed, 0 if it removed none.
    Empty when the build checked no evaluation set."""
    from synth.dedup.decontaminate import set_of_reason

    stage = next((s for s in manifest.get("stages", []) if s["name"] == "decontaminate"), None)
    if stage is None:
        return {}
    by_set: dict[str, int] = {}
    try:
        for spec in (recorded_config(build).get("decontaminate") or {}).get("against") or []:
            by_set[str(spec.get("name") or Path(str(spec.get("path", ""))).stem)] = 0
    except AttributeError:
        pass
    for reason, n in stage.get("rejected", {}).items():
        name = set_of_reason(reason)
        if name is not None:
            by_set[name] = by_set.get(name, 0) + n
    if not by_set:
        return {}
    removed = sum(by_set.values())
    return {"rows_in": stage["rows_in"], "removed": removed, "by_set": by_set, "rate": share(removed, stage["rows_in"])}


def diversity(build: Path, dedup: dict[str, Any]) -> dict[str, Any]:
    """distinct-1/2 of the questions before dedup (every row) and of the corpus (each question once)."""
    sources = {"questions_before_dedup": (build / "stages" / "filter_questions" / "rows", False),
               "corpus_questions": (build / "corpus" / "data", True)}
    out: dict[str, Any] = {}
    for name, (path, once) in sources.items():
        def questions() -> Iterator[str]:
            texts = read_texts(path, "question") if path.exists() else iter(())
            return _unique(texts) if once else texts

        n = sum(1 for _ in questions())
        out[name] = {"n": n, "distinct_1": round(distinct_n(questions(), 1), 4),
                     "distinct_2": round(distinct_n(questions(), 2), 4)} if n else {"n": 0}
    q = dedup.get("dedup_questions")
    out["near_duplicate_share_before_dedup"] = q["rate"] if q else None
    return out


def _unique(texts: Iterator[str]) -> Iterator[str]:
    """Each text once, first occurrence first (by a digest, so the seen set stays small)."""
    seen: set[bytes] = set()
    for text in texts:
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            yield text


def cost(build: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Wall time per stage (manifest) and completion tokens where the rows record them."""
    stages = build / "stages"

    def both(stage: str, columns: list[str]) -> pd.DataFrame:
        frames = [f for f in (read_columns(stages / stage / "rows", columns), read_columns(stages / stage / "rejects", columns))
                  if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    tokens: dict[str, int | None] = {}
    q = both("queries", ["parent_id", "gen_completion_tokens"])
    if len(q) and "gen_completion_tokens" in q:
        tokens["queries"] = int(q.drop_duplicates("parent_id")["gen_completion_tokens"].sum())
    a = both("augment", ["attack", "gen_completion_tokens"])
    if len(a) and "gen_completion_tokens" in a:
        tokens["augment"] = int(a.loc[a["attack"].astype(str) != "none", "gen_completion_tokens"].sum())
    r = both("respond", ["response_tokens"])
    if len(r) and "response_tokens" in r:
        tokens["respond"] = int(r["response_tokens"].fillna(0).sum())
    out = []
    for s in manifest.get("stages", []):
        requests = s.get("requests") or {}
        # builds since the live progress count every stage's tokens as the engines answer (synth.progress);
        # older manifests: what the rows record
        counted = "output_tokens" in s
        out.append({"stage": s["name"], "seconds": s.get("seconds", 0.0), "reused": s.get("reused", False),
                    "completion_tokens": s["output_tokens"] if counted else tokens.get(s["name"]),
                    "prompt_tokens": s["prompt_tokens"] if counted else None,
                    "requests_per_s": s.get("requests_per_s") if counted else None,
                    "requests_sent": requests.get("sent"), "requests_cached": requests.get("cached")})
    return out


def plan_and_actual(manifest: dict[str, Any], costs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan the build recorded (synth/plan.py) beside what its stages did."""
    plan = manifest.get("plan") or {}
    actual = {c["stage"]: c for c in costs}
    out = []
    for s in plan.get("stages", []):
        a = actual.get(s["name"], {})
        done = (a.get("requests_sent") or 0) + (a.get("requests_cached") or 0) if a else None
        out.append({"stage": s["name"], "planned_requests": s["requests"], "requests": done,
                    "planned_output_tokens": s.get("output_tokens"), "output_tokens": a.get("completion_tokens"),
                    "seconds": a.get("seconds")})
    return out


def collect(build: Path) -> dict[str, Any]:
    build = Path(build)
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    corpus = load_corpus_files(build, (*CORPUS_KEYS, *CONTENT_KEYS))
    lengths = corpus_lengths(build)
    hard = read_columns(build / "hard" / "hard.parquet", ["scenario", "subcategory", "hard_reason", "hard_stage"])
    rejects = {f.stem: pq.ParquetFile(f).metadata.num_rows for f in parquet_files(build / "rejects")}
    labels = {k: int(v) for k, v in corpus["label"].value_counts().sort_index().items()} if len(corpus) else {}
    by_scenario: dict[str, dict[str, Any]] = {}
    if len(corpus):
        for (scenario, name), g in corpus.groupby(["scenario", "scenario_name"], sort=True):
            by_scenario[scenario] = {"name": name, **{label: int((g["label"] == label).sum()) for label in LABELS},
                                     "rows": int(len(g))}
    tier = load_tier(build)
    cov = coverage(build, corpus, hard, tier)
    dedup = dedup_rates(manifest)
    export = manifest.get("export", {})
    return {
        "build": {k: manifest.get(k) for k in ("name", "synth_version", "config_hash", "seed", "dry_run", "engine")},
        "models": manifest.get("models", {}),
        "roles": manifest.get("roles", {}),
        "funnel": funnel(manifest),
        "corpus": {"rows": int(len(corpus)),
                   "train": int((corpus["split"] == "train").sum()) if len(corpus) else 0,
                   "validation": int((corpus["split"] == "validation").sum()) if len(corpus) else 0,
                   "labels": labels,
                   "unsafe_share": share(labels.get("不安全", 0), int(len(corpus))),
                   "kinds": {k: int(v) for k, v in corpus["kind"].value_counts().sort_index().items()} if len(corpus) else {},
                   "attacks": {k: int(v) for k, v in corpus["attack"].value_counts().sort_index().items()} if len(corpus) else {}},
        "controversial": {
            "rows": int(len(tier)),
            "train": int((tier["split"] == "train").sum()) if len(tier) else 0,
            "validation": int((tier["split"] == "validation").sum()) if len(tier) else 0,
            "by_reason": {str(k): int(v) for k, v in tier["controversy"].value_counts().sort_index().items()}
            if len(tier) else {},
            "share_of_labelled": share(int(len(tier)), int(len(tier) + len(corpus)))},
        "hard": {"rows": int(len(hard)),
                 "by_reason": {str(k): int(v) for k, v in hard["hard_reason"].value_counts().sort_index().items()}
                 if len(hard) and "hard_reason" in hard else {},
                 "by_stage": {str(k): int(v) for k, v in hard["hard_stage"].value_counts().sort_index().items()}
                 if len(hard) and "hard_stage" in hard else {}},
        "rejects": rejects,
        "balance": export.get("balance"),
        "label_by_scenario": by_scenario,
        "coverage": cov,
        "coverage_gaps": [{"scenario": c["scenario"], "subcategory": c["subcategory"],
                           "subcategory_name": c["subcategory_name"], "missing": c["missing"]} for c in cov if c["missing"]],
        "coverage_by_content": coverage_by_content(build, corpus),
        "scorecard": scorecard(build, manifest),
        "lengths": {
            field: {"all": _lengths(lengths[field]) if len(corpus) else {"n": 0},
                    **{label: _lengths(lengths.loc[lengths["label"] == label, field]) for label in LABELS if len(corpus)}}
            for field in ("question", "response")
        },
        "judges": judge_agreement(build),
        "calibration": manifest.get("judges_calibration"),
        # judges vs people, people vs people, the audit sample: None until people labelled rows
        "reviews": reviews(build, export),
        "refusals": refusals(build),
        "unsafe_yield": unsafe_yield(build),
        "dialogues": dialogues(build, manifest),
        "dedup": dedup,
        "decontamination": decontamination(build, manifest),
        "diversity": diversity(build, dedup),
        "cost": cost(build, manifest),
        "plan": {"stages": plan_and_actual(manifest, cost(build, manifest)),
                 "totals": (manifest.get("plan") or {}).get("totals"),
                 "rates_from": (manifest.get("plan") or {}).get("rates_from")},
        "wall_seconds": round(sum(s.get("seconds", 0.0) for s in manifest.get("stages", [])), 2),
    }
