"""Decontamination: find the rows that copy an evaluation item (a Libra-Test question, ...).

A row is *contaminated* by an evaluation item when its text (the question, or question and
response joined by a newline, normalised as dedup normalises) is a near duplicate of the
item's text:

- an item of `short_chars` normalised characters or more: Jaccard of their shingle sets
  (the dedup shingles: `shingle`, `ngram`) >= `threshold`. Candidates come from MinHash LSH
  (the dedup `MinHasher`, the banding `MinHashSettings.banding` picks for the threshold) and
  are verified by exact Jaccard, as dedup verifies;
- a shorter item, where a few edited characters move Jaccard a long way: exact n-gram
  overlap, the share of the item's character `overlap_ngram`-grams found in the row, >=
  `overlap` (so a row holding the whole item, or the item with a few characters changed,
  matches). Candidates come from a prefix filter: a row reaching the share must contain one
  of the item's k - ceil(overlap * k) + 1 rarest n-grams, so only those are indexed and no
  match is missed.

A row copying several items is reported with the most similar one (ties: the first set in
the configuration, then the first item in its file). Rows and items without text never match.

The evaluation sets are small next to a corpus (Libra-Test: ~5,700 items): they are indexed
on the driver (`ContaminationIndex`) and broadcast to the workers, and the rows stream past
them in `map_batches`, vectorised per batch like dedup's signature pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from synth.dedup.settings import DecontaminateConfig, EvalSet
from synth.dedup.minhash import MinHasher
from synth.dedup.text import (ragged_positions, char_shingles_of_code_points, jaccard, normalise_batch,
                              shingles_of_code_points, sorted_sets)
from synth.errors import BadInput
from synth.stream_io import read_jsonl

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

CONTAMINATED = "contaminated"  # the reject reason's code: "contaminated: <evaluation set>"
COLUMNS = ("contaminated_by", "contamination_similarity")  # what a removed row adds (and the reason)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def reason_for(set_name: str) -> str:
    """The reject reason of a row contaminated by an item of `set_name` (counted per set by the runner)."""
    return f"{CONTAMINATED}: {set_name}"


def set_of_reason(reason: str) -> str | None:
    """The evaluation set named by a `reason_for` reason, None for any other reason."""
    prefix = f"{CONTAMINATED}: "
    return reason[len(prefix):] if reason.startswith(prefix) else None


def join_fields(columns: Sequence[Sequence[Any]]) -> list[str]:
    """Per row, its fields' texts joined by a newline (null as empty): rows and items alike."""
    if len(columns) == 1:
        return ["" if v is None else str(v) for v in columns[0]]
    return ["\n".join("" if v is None else str(v) for v in values) for values in zip(*columns)]


# ---------------------------------------------------------------- evaluation files


@dataclass
class LoadedEvalSet:
    name: str
    path: Path
    ids: list[str]
    texts: list[str]  # the text fields joined, as the rows' are


def load_eval_sets(specs: Sequence[EvalSet], default_fields: Sequence[str]) -> list[LoadedEvalSet]:
    """Read and check every evaluation file; BadInput naming the file (and line) at fault."""
    return [load_eval_set(spec, default_fields) for spec in specs]


def load_eval_set(spec: EvalSet, default_fields: Sequence[str]) -> LoadedEvalSet:
    path = Path(spec.path)
    fields = spec.text_fields(default_fields)
    if not path.exists():
        raise BadInput(f"{path}: evaluation file not found (evaluation set {spec.name!r})")
    if path.is_dir() or path.suffix.lower() == ".parquet":
        ids, columns = _parquet_items(path, fields, spec.id_field)
    elif path.suffix.lower() in JSONL_SUFFIXES:
        ids, columns = _jsonl_items(path, fields, spec.id_field)
    else:
        raise BadInput(f"{path}: unsupported evaluation file (expected .jsonl, or a .parquet file or folder)")
    if not ids:
        raise BadInput(f"{path}: evaluation file is empty (0 items)")
    texts = join_fields(columns)
    if not normalise_batch(texts)[1].any():
        raise BadInput(f"{path}: no evaluation item has text in field(s) {', '.join(map(repr, fields))}")
    return LoadedEvalSet(spec.name, path, ids, texts)


def _text(value: Any, where: str, field: str) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    raise BadInput(f"{where}: field {field!r} is {type(value).__name__}, expected text")


def _id(value: Any, where: str, field: str) -> str:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    if value is None:
        raise BadInput(f"{where}: id field {field!r} is null")
    raise BadInput(f"{where}: id field {field!r} is {type(value).__name__}, expected a string or integer id")


def _missing(where: str, field: str, role: str, present: Sequence[str]) -> BadInput:
    return BadInput(f"{where}: no field {field!r} (the evaluation {role} field); "
                    f"fields are: {', '.join(present) or '(none)'}")


def _jsonl_items(path: Path, fields: list[str], id_field: str) -> tuple[list[str], list[list[str]]]:
    ids: list[str] = []
    columns: list[list[str]] = [[] for _ in fields]
    for number, row in read_jsonl(path, "evaluation"):
        where = f"{path}: line {number}"
        for field, column in zip(fields, columns):
            if field not in row:
                raise _missing(where, field, "text", list(row))
            column.append(_text(row[field], where, field))
        if id_field not in row:
            raise _missing(where, id_field, "id", list(row))
        ids.append(_id(row[id_field], where, id_field))
    return ids, columns


def _parquet_items(path: Path, fields: list[str], id_field: str) -> tuple[list[str], list[list[str]]]:
    import pyarrow.parquet as pq

    files = sorted(p for p in path.rglob("*.parquet") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise BadInput(f"{path}: folder holds no .parquet files")
    ids: list[str] = []
    columns: list[list[str]] = [[] for _ in fields]
    for file in files:
        try:
            table = pq.read_table(file)
        except (pa.ArrowException, OSError) as e:
            raise BadInput(f"{file}: cannot read as parquet: {e}") from None
        for field, role in [*((f, "text") for f in fields), (id_field, "id")]:
            if field not in table.column_names:
                raise _missing(str(file), field, role, table.column_names)
        start = len(ids)
        for field, column in zip(fields, columns):
            column += [_text(v, f"{file}: row {start + i + 1}", field) for i, v in enumerate(table[field].to_pylist())]
        ids += [_id(v, f"{file}: row {start + i + 1}", id_field) for i, v in enumerate(table[id_field].to_pylist())]
    return ids, columns


def eval_set_digest(path: Path) -> str:
    """Hash of an evaluation file's content (a folder: its parquet files'), for the stage signature."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file()) if path.is_dir() else [path]
    try:
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
            with file.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    except OSError as e:
        raise BadInput(f"{path}: cannot read the evaluation file: {e.strerror or e}") from None
    return digest.hexdigest()[:16]


def eval_set_identity(spec: EvalSet, default_fields: Sequence[str]) -> dict[str, Any]:
    """What of an evaluation set decides which rows it removes: its content and fields, not its path."""
    return {"name": spec.name, "text_fields": spec.text_fields(default_fields), "id_field": spec.id_field,
            "content": eval_set_digest(spec.path)}


# ---------------------------------------------------------------- the index


def _lookup(keys: np.ndarray, owners: np.ndarray, query: np.ndarray, query_docs: np.ndarray) -> np.ndarray:
    """Unique (document, owner) pairs where a query key equals an indexed key (`keys` sorted)."""
    if len(keys) == 0 or len(query) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    lo = np.searchsorted(keys, query, side="left")
    hits = np.searchsorted(keys, query, side="right") - lo
    docs = np.repeat(query_docs.astype(np.int64), hits)
    items = owners[ragged_positions(lo.astype(np.int64), hits.astype(np.int64))].astype(np.int64)
    if len(docs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.stack((docs, items), axis=1), axis=0)


class ContaminationIndex:
    """The evaluation items of one or more sets, indexed for `match` (picklable: Ray broadcasts it)."""

    def __init__(self, sets: Sequence[LoadedEvalSet], config: DecontaminateConfig) -> None:
        self.config = config.model_copy(update={"against": []})
        self.names = [s.name for s in sets]
        self.ids = [i for s in sets for i in s.ids]
        self.set_of = np.concatenate([np.full(len(s.ids), k, dtype=np.int32) for k, s in enumerate(sets)]) \
            if sets else np.zeros(0, np.int32)
        texts = [t for s in sets for t in s.texts]
        lengths = normalise_batch(texts)[1]
        self.items = len(texts)
        self.long = np.flatnonzero(lengths >= max(config.short_chars, 1))
        self.short = np.flatnonzero((lengths > 0) & (lengths < config.short_chars))
        self.bands, self.rows = config.banding()

        # long items: LSH band keys -> item, and shingle sets to verify Jaccard
        cps, lens = normalise_batch([texts[i] for i in self.long])
        hashes, counts = shingles_of_code_points(cps, lens, config.shingle, config.ngram)
        self.long_sets = sorted_sets(hashes, counts)
        keys = self._hasher().band_keys(self._hasher().signatures(hashes, counts), self.bands, self.rows)
        owners = np.tile(np.arange(len(self.long), dtype=np.int64), self.bands)
        order = np.argsort(keys.ravel(), kind="stable")
        self.band_keys, self.band_owner = keys.ravel()[order], owners[order]

        # short items: their n-gram sets, and each one's rarest n-grams (the prefix filter)
        cps, lens = normalise_batch([texts[i] for i in self.short])
        values, offsets = sorted_sets(*char_shingles_of_code_points(cps, lens, config.overlap_ngram))
        self.short_sets = (values, offsets)
        sizes = np.diff(offsets)
        owner = np.repeat(np.arange(len(self.short), dtype=np.int64), sizes)
        _, inverse, frequency = np.unique(values, return_inverse=True, return_counts=True)
        order = np.lexsort((values, frequency[inverse], owner))  # per item, rarest n-grams first
        rank = np.arange(len(values)) - offsets[owner]
        # a row sharing `need` of an item's k n-grams misses at most k - need: one of any k - need + 1 is shared
        need = np.maximum(np.ceil(config.overlap * sizes - 1e-9), 1).astype(np.int64)
        prefix = sizes - need + 1
        taken = order[rank < prefix[owner]]
        by_value = np.argsort(values[taken], kind="stable")
        self.prefix_values, self.prefix_owner = values[taken][by_value], owner[taken][by_value]

    def _hasher(self) -> MinHasher:
        if getattr(self, "_minhasher", None) is None:
            self._minhasher = MinHasher(self.config.num_perm, self.config.seed)
        return self._minhasher

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_minhasher"}  # rebuilt from the seed

    def match(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Per text: the index (into `ids`) of the evaluation item it copies, -1 if none, and the similarity."""
        n = len(texts)
        best = np.full(n, -1, dtype=np.int64)
        similarity = np.zeros(n, dtype=np.float64)
        if n == 0:
            return best, similarity
        cps, lengths = normalise_batch(texts)
        present = lengths > 0
        found: list[tuple[int, int, float]] = []  # (row, item, similarity)
        config = self.config
        if len(self.long) and present.any():
            hashes, counts = shingles_of_code_points(cps, lengths, config.shingle, config.ngram)
            keys = self._hasher().band_keys(self._hasher().signatures(hashes, counts), self.bands, self.rows)
            docs = np.tile(np.arange(n, dtype=np.int64), self.bands)
            asked = present[docs]
            pairs = _lookup(self.band_keys, self.band_owner, keys.ravel()[asked], docs[asked])
            if len(pairs):
                values, offsets = sorted_sets(hashes, counts)
                item_values, item_offsets = self.long_sets
                for row, j in pairs.tolist():
                    s = jaccard(values[offsets[row]:offsets[row + 1]], item_values[item_offsets[j]:item_offsets[j + 1]])
                    if s >= config.threshold:
                        found.append((row, int(self.long[j]), s))
        if len(self.short) and present.any():
            values, offsets = sorted_sets(*char_shingles_of_code_points(cps, lengths, config.overlap_ngram))
            docs = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
            pairs = _lookup(self.prefix_values, self.prefix_owner, values, docs)
            item_values, item_offsets = self.short_sets
            for row, j in pairs.tolist():
                grams = item_values[item_offsets[j]:item_offsets[j + 1]]
                shared = len(np.intersect1d(values[offsets[row]:offsets[row + 1]], grams, assume_unique=True))
                s = shared / len(grams)
                if s >= config.overlap:
                    found.append((row, int(self.short[j]), s))
        for row, item, s in found:  # the most similar item; ties: the first one
            if s > similarity[row] or (s == similarity[row] and (best[row] < 0 or item < best[row])):
                best[row], similarity[row] = item, s
        return best, similarity

    def mark(self, batch: pa.Table, text_fields: Sequence[str], reason_column: str) -> pa.Table:
        """`batch` with `contaminated_by` (evaluation id, "" if clean), `contamination_similarity`
        and `reason_column` ("contaminated: <set>", "" if clean); existing columns of those names replaced."""
        texts = join_fields([batch[f].to_pylist() for f in text_fields])
        best, similarity = self.match(texts)
        by = [self.ids[i] if i >= 0 else "" for i in best.tolist()]
        reasons = [reason_for(self.names[self.set_of[i]]) if i >= 0 else "" for i in best.tolist()]
        out = batch.drop_columns([c for c in (*COLUMNS, reason_column) if c in batch.column_names])
        out = out.append_column(COLUMNS[0], pa.array(by, pa.string()))
        out = out.append_column(COLUMNS[1], pa.array(similarity, pa.float64()))
        return out.append_column(reason_column, pa.array(reasons, pa.string()))


# ---------------------------------------------------------------- on Ray Data


def _mark_batch(batch: pa.Table, index_ref: Any, text_fields: list[str], reason_column: str) -> pa.Table:
    from synth.dedup.pipeline import cached_get

    return cached_get(index_ref).mark(batch, text_fields, reason_column)


def mark_contamination(ds: "ray.data.Dataset", text_fields: Sequence[str], index: ContaminationIndex, *,
                       batch_size: int = 2048, reason_column: str = "reason") -> "ray.data.Dataset":
    """Every row of `ds`, with `contaminated_by`, `contamination_similarity` and `reason_column`
    ("" for a clean row): one streaming pass, the index broadcast once per worker."""
    import ray

    return ds.map_batches(_mark_batch, batch_size=batch_size, batch_format="pyarrow",
                          fn_kwargs={"index_ref": ray.put(index), "text_fields": list(text_fields),
                                     "reason_column": reason_column})


__all__ = ["CONTAMINATED", "COLUMNS", "ContaminationIndex", "LoadedEvalSet", "eval_set_digest", "eval_set_identity",
           "join_fields", "load_eval_set", "load_eval_sets", "mark_contamination", "reason_for",
           "set_of_reason"]
