"""Exact and near-duplicate removal for Chinese text: MinHash + LSH.

Two documents are *exact duplicates* when their normalised texts (NFKC, lower case,
everything but letters and digits removed: whitespace, punctuation, symbols) are equal, and *near
duplicates* when the Jaccard similarity of their shingle sets (character n-grams of
the normalised text by default, or jieba word n-grams) reaches `threshold`.

How it runs (see `synth/dedup/steps.py`; `synth/dedup/pipeline.py` runs the steps on Ray Data
across a cluster or in a pool of local processes on one machine, `DedupConfig.executor`):

1. signatures: each batch of texts becomes shingle hashes
   (numpy, no per-shingle Python), MinHash signatures (vectorised universal hashing)
   and one row per (band key, document) — a few dozen bytes per band, never the text;
2. band keys are sorted (across workers: a Ray Data shuffle) and every run of equal
   keys yields candidate edges;
3. candidate documents are grouped by connected component, their shingle sets are
   rebuilt in a second streaming pass, candidate pairs are verified by exact Jaccard,
   and verified pairs are clustered by union-find. Within a cluster, members are
   taken in `keep` order (lowest id, or longest text): each is removed as a duplicate
   of the first kept member it is verified similar to, or is kept. So a removed row's
   `duplicate_of` is always within the threshold of it, even when union-find chained
   A~B~C with A≁C (then A and C are kept, B is removed as a duplicate of A).

The result does not depend on how the input is split into blocks, how many workers
run it, or which executor.

Decontamination (`synth/dedup/decontaminate.py`, `DecontaminateConfig`) compares rows with
the items of evaluation sets instead of with each other, over the same normalisation,
shingles and MinHash (`MinHashSettings` is what the two share).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

__all__ = [
    "DecontaminateConfig",
    "DedupConfig",
    "DuplicateIdError",
    "EvalSet",
    "MinHashSettings",
    "candidate_probability",
    "choose_bands_rows",
    "deduplicate",
    "mark_duplicates",
]

from synth.dedup.settings import (  # noqa: E402  (re-exported: the package's API)
    CANDIDATE_RECALL_AT_THRESHOLD,
    candidate_probability,
    choose_bands_rows,
    MinHashSettings,
    DedupConfig,
    EvalSetName,
    EvalSet,
    DecontaminateConfig,
    DuplicateIdError,
)


def deduplicate(
    ds: "ray.data.Dataset", text_field: str, id_field: str, config: DedupConfig
) -> tuple["ray.data.Dataset", "ray.data.Dataset"]:
    """Split `ds` into (kept, removed) rows.

    All input columns are preserved. `removed` adds `duplicate_of` (str id of the kept
    row it duplicates: the first member of its cluster in `keep` order that it is
    similar to), `similarity` (Jaccard of the two on the configured shingles, ≥ the
    threshold; 1.0 for exact duplicates; the MinHash estimate when `verify` is off)
    and `reason` ("exact_duplicate" | "near_duplicate"); existing columns of those
    names are replaced in `removed`.

    Rows whose normalised text is empty (null, only punctuation or whitespace) are
    never removed. Ids must be unique (DuplicateIdError otherwise); they are compared
    as strings.

    Candidate detection and clustering run eagerly inside this call; the returned
    datasets are lazy and read `ds` again when consumed. `ds` is read three to four
    times in all, so pass a dataset that is cheap to re-read (parquet) or materialised.
    """
    from synth.dedup.pipeline import deduplicate as _deduplicate

    return _deduplicate(ds, text_field, id_field, config)



def mark_duplicates(ds: "ray.data.Dataset", text_field: str, id_field: str, config: DedupConfig,
                    compared: "ray.data.Dataset | None" = None) -> "ray.data.Dataset":
    """Like `deduplicate`, as one dataset: every row, with `duplicate_of`, `similarity` and
    `reason` ("" for a kept row), read in one pass instead of two (what the build's dedup
    stages use: the runner splits rows from rejects by `reason`). `compared`, if given, holds
    the rows to compare (`id_field` and `text_field` only); rows of `ds` not in it are kept."""
    from synth.dedup.pipeline import mark_duplicates as _mark

    return _mark(ds, text_field, id_field, config, compared)
