"""Dedup and decontamination settings (`MinHashSettings`, `DedupConfig`, `DecontaminateConfig`,
`EvalSet`), the choice of LSH bands and rows, and `DuplicateIdError`. See `synth.dedup`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator


# The LSH banding is chosen so that a pair whose Jaccard equals the threshold becomes
# a candidate with at least this probability (datasketch's own choice at 0.8, b=9 r=13,
# gets ~40%). False candidates cost only a verification; missed pairs are lost.
CANDIDATE_RECALL_AT_THRESHOLD = 0.995


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two documents of Jaccard `similarity` share at least one band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def _false_candidate_area(threshold: float, bands: int, rows: int, steps: int = 200) -> float:
    """∫_0^threshold P(candidate | s) ds: how many dissimilar pairs become candidates."""
    h = threshold / steps
    return sum(candidate_probability((i + 0.5) * h, bands, rows) for i in range(steps)) * h


def choose_bands_rows(
    threshold: float, num_perm: int, min_recall: float = CANDIDATE_RECALL_AT_THRESHOLD
) -> tuple[int, int]:
    """Pick (bands, rows), bands * rows <= num_perm, for a verified LSH at `threshold`.

    Among all splits whose candidate probability at the threshold is at least
    `min_recall`, take the one with the fewest false candidates below the threshold
    (so the least verification work). If no split reaches `min_recall` (num_perm too
    small), take the split with the highest probability at the threshold.
    """
    best: tuple[float, int, int] | None = None
    fallback: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        p = candidate_probability(threshold, bands, rows)
        if fallback is None or p > fallback[0]:
            fallback = (p, bands, rows)
        if p >= min_recall:
            area = _false_candidate_area(threshold, bands, rows)
            if best is None or area < best[0]:
                best = (area, bands, rows)
    chosen = best or fallback
    assert chosen is not None
    return chosen[1], chosen[2]


class MinHashSettings(BaseModel):
    """What makes two texts near duplicates, and how MinHash LSH finds them: shared by
    dedup (`DedupConfig`) and decontamination (`DecontaminateConfig`), so both compare
    the same shingles."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard similarity at or above which two texts are duplicates")
    shingle: Literal["char", "word"] = Field(
        "char", description="char: character n-grams of the normalised text (fast); word: jieba word n-grams"
    )
    ngram: int = Field(5, ge=1, le=32, description="n of the n-grams")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations")
    bands: int | None = Field(None, ge=1, description="LSH bands; None = derived from threshold and num_perm")
    rows: int | None = Field(None, ge=1, description="rows per LSH band; None = derived")
    seed: int = Field(1, ge=0, description="seed of the MinHash permutations")

    @model_validator(mode="after")
    def _banding_fits(self) -> "MinHashSettings":
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands * rows = {self.bands} * {self.rows} = {self.bands * self.rows} exceeds num_perm = {self.num_perm}"
            )
        if self.bands is not None and self.rows is None and self.bands > self.num_perm:
            raise ValueError(f"bands = {self.bands} exceeds num_perm = {self.num_perm}")
        if self.rows is not None and self.bands is None and self.rows > self.num_perm:
            raise ValueError(f"rows = {self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def banding(self) -> tuple[int, int]:
        """The (bands, rows) in force: given ones, or derived from threshold and num_perm."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        if self.bands is not None:
            return self.bands, self.num_perm // self.bands
        if self.rows is not None:
            return self.num_perm // self.rows, self.rows
        return choose_bands_rows(self.threshold, self.num_perm)

    def candidate_recall_at_threshold(self) -> float:
        bands, rows = self.banding()
        return candidate_probability(self.threshold, bands, rows)


class DedupConfig(MinHashSettings):
    """Settings of one dedup pass (pipeline YAML `dedup.questions` / `dedup.pairs`)."""

    enabled: bool = True
    verify: bool = Field(True, description="check candidate pairs by exact Jaccard (else by the MinHash estimate)")
    keep: Literal["lowest_id", "longest"] = Field(
        "lowest_id", description="which member of a cluster is kept: lowest id, or longest text (ties: lowest id)"
    )
    batch_size: int = Field(2048, ge=1, description="documents per signature batch")
    concurrency: int | None = Field(None, ge=1, description="max parallel tasks (local: processes) per pass; None = as "
                                    "many as there are CPUs")
    executor: Literal["auto", "local", "ray"] = Field(
        "auto", description="local: a pool of processes on this machine; ray: Ray Data operators across the cluster; "
        "auto: ray when Ray runs on more than one node, else local. The rows are the same either way")


# An evaluation set's name is part of a reject reason ("contaminated: NAME") and of the
# manifest's counts: printable, one line, no colon.
EvalSetName = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f:]+$")]


class EvalSet(BaseModel):
    """One evaluation file to decontaminate against (pipeline YAML `decontaminate.against`)."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="a .jsonl file or a .parquet file or folder; relative to the config file")
    text_field: str | list[str] | None = Field(
        None, description="its text field(s), joined by a newline as the rows' are; None = the same as `fields`"
    )
    id_field: str = Field("id", description="its item ids, recorded in a removed row's `contaminated_by`")
    name: EvalSetName | None = Field(None, description="how rejects and counts name it; None = the file name's stem")

    @model_validator(mode="after")
    def _default_name(self) -> "EvalSet":
        if self.name is None:
            self.name = Path(self.path).stem or str(self.path)
        return self

    def text_fields(self, default: Sequence[str]) -> list[str]:
        if self.text_field is None:
            return list(default)
        return [self.text_field] if isinstance(self.text_field, str) else list(self.text_field)


class DecontaminateConfig(MinHashSettings):
    """Removal of rows that copy an evaluation item (pipeline YAML `decontaminate`).

    An evaluation item of `short_chars` normalised characters or more is matched by MinHash
    LSH over the dedup shingles, verified by exact Jaccard >= `threshold`; a shorter one (where
    a few edited characters move Jaccard a long way) by exact n-gram overlap: the share of its
    character `overlap_ngram`-grams that occur in the row, >= `overlap`. No `against`: the
    stage passes every row through.
    """

    against: list[EvalSet] = Field(default_factory=list, description="evaluation files; empty = no decontamination")
    fields: list[Literal["question", "response"]] = Field(
        default_factory=lambda: ["question"], min_length=1,
        description="the row text compared with evaluation items: [question] or [question, response]",
    )
    threshold: float = Field(0.7, gt=0.0, le=1.0, description="Jaccard of the shingles at or above which a row "
                             "copies a (long) evaluation item")
    short_chars: int = Field(100, ge=0, description="evaluation items shorter than this (normalised characters) "
                             "are matched by n-gram overlap instead of Jaccard")
    overlap_ngram: int = Field(3, ge=1, le=32, description="n of the character n-grams of the short-text overlap")
    overlap: float = Field(0.7, gt=0.0, le=1.0, description="share of a short evaluation item's n-grams a row "
                           "must contain to copy it")
    batch_size: int = Field(2048, ge=1, description="rows per batch")

    @model_validator(mode="after")
    def _names_unique(self) -> "DecontaminateConfig":
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields {self.fields}: a field is named twice")
        seen: set[str] = set()
        for i, spec in enumerate(self.against):
            if spec.name in seen:
                raise ValueError(f"against[{i}]: evaluation set name {spec.name!r} is used twice (set `name`)")
            seen.add(spec.name)
        return self


class DuplicateIdError(ValueError):
    """Two input rows share an id; dedup needs unique ids to say what a row duplicates."""
