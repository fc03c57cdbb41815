"""Balance the corpus before export: caps per subcategory × label, and a target unsafe share.

Applied by the export to the final stage's rows, before the train/validation
split, so every view (corpus/, sft/, libra_test.jsonl) sees the same rows.
Deterministic: within a stratum, rows are ranked by a hash of (build seed, row id),
the question kinds taking turns (harmful, benign, harmful, ... each in hash order), so
the same rows are kept on every machine and every rerun, a cap keeps both kinds where
both are there, and adding rows to one subcategory never changes which rows another keeps.

1. Cap: in each (scenario, subcategory, label) stratum keep the first
   `max_per_subcategory_label` rows of each shape (single questions; conversations,
   `turns` > 1: a guard needs both, so one never takes the other's places); the rest are
   cut with reason `balance_cap`.
2. Share: if the share of 不安全 rows is outside `unsafe_share ± tolerance`, cut
   the larger label down to the nearest edge of that band (as few rows as possible),
   taking them from that label's largest subcategories first (water-filling), so
   small subcategories keep their rows; reason `balance_share`. If one label has
   no rows at all, nothing is cut (a share cannot be reached by deleting the corpus).

Nothing vanishes: cut rows are written to `rejects/balance.parquet` with their
reason, and the counts go into the manifest (`export.balance`).

Rows whose label people gave or confirmed (`pinned`: synth/human_labels.py) are never cut: they
rank first in their stratum, so a cap counts them before the others, and they stay even where
a stratum is cut below them. Without such rows the ranking is what it always was.

The strata and the kinds' turns read `scenario`, `subcategory` and `kind` as the rows carry
them. Where a question judge ran, its routing has already rewritten those to the judged
content (relabel: the judged kind; reassign: the judged subcategory and its scenario; see
synth/stages/question_judge.py), so balance counts by content and needs no column of its own;
the request stays in `requested_kind`/`requested_subcategory`. A routing of `keep` leaves
the request in place, and balance then counts by it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import pandas as pd

from synth.output_parsing import SAFE, UNSAFE
from synth.rows import REJECT_COLUMN, stable_id

BALANCE_CAP = "balance_cap"
BALANCE_SHARE = "balance_share"
STRATUM = ["scenario", "subcategory", "label"]


def _share(df: pd.DataFrame) -> float | None:
    return float((df["label"] == UNSAFE).mean()) if len(df) else None


def water_fill(sizes: dict[Any, int], keep_total: int, seed: int) -> dict[Any, int]:
    """How many rows each stratum keeps so that the total is `keep_total`, cutting the largest first.

    The result is min(size, level) per stratum, plus one for some strata above the
    level (chosen by a seeded hash of the stratum key) to hit the total exactly.
    """
    total = sum(sizes.values())
    if keep_total >= total:
        return dict(sizes)
    if keep_total <= 0:
        return {k: 0 for k in sizes}
    ordered = sorted(sizes.values())
    # Find the largest level L with sum(min(n, L)) <= keep_total.
    lo, hi = 0, ordered[-1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in ordered) <= keep_total:
            lo = mid
        else:
            hi = mid - 1
    level = lo
    keep = {k: min(n, level) for k, n in sizes.items()}
    remaining = keep_total - sum(keep.values())
    above = sorted((k for k, n in sizes.items() if n > level), key=lambda k: stable_id("balance-stratum", seed, k))
    for k in above[:remaining]:
        keep[k] += 1
    return keep


def apply_balance(corpus: pd.DataFrame, config: Any, seed: int, pinned: Collection[str] = ()
                  ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(kept rows, cut rows with `reject_reason`, counts). `config` is a `synth.config.Balance` (or None);
    `pinned`: ids of rows never cut (see the module docstring)."""
    counts: dict[str, Any] = {
        "rows_in": len(corpus), "rows_out": len(corpus), "cut": {BALANCE_CAP: 0, BALANCE_SHARE: 0},
        "unsafe_share_before": _share(corpus), "unsafe_share_after": _share(corpus), "share_skipped": "",
    }
    empty_cut = corpus.iloc[0:0].assign(**{REJECT_COLUMN: pd.Series([], dtype=str)})
    cap = getattr(config, "max_per_subcategory_label", None)
    target = getattr(config, "unsafe_share", None)
    if corpus.empty or (cap is None and target is None):
        return corpus, empty_cut, counts

    df = corpus.reset_index(drop=True)
    df = df.assign(_order=df["id"].map(lambda i: stable_id("balance", seed, i)), _free=~df["id"].isin(pinned),
                   _shape=df["turns"].fillna(1).astype(int) > 1 if "turns" in df.columns else False)
    # Conversations are capped apart from single questions (the shape: `turns` > 1), so single
    # questions never crowd the conversations of their subcategory out of the corpus. Within a
    # stratum and shape the kinds take turns (one harmful, one benign, ... in hash order), so a
    # cap keeps both refusals of harmful questions and benign look-alikes in the 安全 class.
    capped = [*STRATUM, "_shape"]
    df["_turn"] = (df.sort_values("_order").groupby([*capped, "kind"], sort=False).cumcount()
                   if "kind" in df.columns else 0)
    df = df.sort_values([*capped, "_free", "_turn", "_order"])  # pinned rows (not free) first
    df["_rank"] = df.groupby(capped, sort=False).cumcount()
    reason = pd.Series("", index=df.index, dtype=object)

    if cap is not None:
        reason[df["_rank"] >= cap] = BALANCE_CAP

    if target is not None:
        tolerance = float(getattr(config, "tolerance", 0.0))
        kept = df[reason == ""]
        unsafe, safe = int((kept["label"] == UNSAFE).sum()), int((kept["label"] == SAFE).sum())
        hi, lo = min(target + tolerance, 1.0), max(target - tolerance, 0.0)
        cut_label, keep_n = None, None
        if unsafe == 0 or safe == 0:
            counts["share_skipped"] = f"no rows labelled {SAFE if safe == 0 else UNSAFE}"
        elif unsafe / (unsafe + safe) > hi:
            cut_label, keep_n = UNSAFE, math.floor(hi * safe / (1 - hi) + 1e-9) if hi < 1 else unsafe
        elif unsafe / (unsafe + safe) < lo:
            cut_label, keep_n = SAFE, math.floor(unsafe * (1 - lo) / lo + 1e-9) if lo > 0 else safe
        if cut_label is not None:
            of_label = kept[kept["label"] == cut_label]
            groups = of_label.groupby(["scenario", "subcategory"], sort=True)
            sizes = {f"{s}/{c}": len(g) for (s, c), g in groups}
            keep = water_fill(sizes, max(1, keep_n), seed)
            for (s, c), g in groups:
                n_keep = keep[f"{s}/{c}"]
                g = g.sort_values(["_free", "_turn", "_order"])  # turn order, both shapes taking turns
                reason[g.index[n_keep:]] = BALANCE_SHARE

    reason[~df["_free"]] = ""
    df = df.drop(columns=["_order", "_turn", "_rank", "_free", "_shape"])
    kept = df[reason == ""].sort_values("id")
    cut = df[reason != ""].assign(**{REJECT_COLUMN: reason[reason != ""]}).sort_values("id")
    counts.update(
        rows_out=len(kept),
        cut={BALANCE_CAP: int((cut[REJECT_COLUMN] == BALANCE_CAP).sum()),
             BALANCE_SHARE: int((cut[REJECT_COLUMN] == BALANCE_SHARE).sum())},
        unsafe_share_after=_share(kept),
    )
    return kept.reset_index(drop=True), cut.reset_index(drop=True), counts
