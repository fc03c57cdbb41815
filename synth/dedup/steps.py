"""The steps of near-duplicate removal, as plain functions of Arrow tables and numpy arrays.

Each step is a deterministic function of its rows, with no Ray in it, so one algorithm runs
on two executors: Ray Data across a cluster (`synth/dedup/pipeline.py`) and a pool of local
processes on one machine (`synth/dedup/local.py`). Both give the same rows.

1. `band_rows`: per batch, normalise, shingle, MinHash and emit one (key, node) row per LSH
   band, one for the exact hash of the normalised text and one for the id (to catch duplicate
   ids). `node` is a 64-bit hash of the id.
2. `bucket_edges`: over rows sorted by key (a block holding every row of its keys), each run of
   equal keys yields candidate edges (consecutive members and first-to-every-member).
3. `candidate_components`: the edges made unique and cut into connected components.
4. `candidate_rows`: candidate rows re-shingled, with their component.
5. `verify_components`: over rows grouped by component, pairs are verified (all pairs of a
   component up to ALL_PAIRS_MAX members, the LSH edges beyond), clustered by union-find, and
   each cluster's members, in keep order, join the first kept member they are verified
   similar to or are kept themselves.
6. `mark_rows`: input rows looked up in the removed table by id hash.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synth.dedup.settings import DedupConfig, DuplicateIdError
from synth.dedup.clusters import connected_components, keep_order
from synth.dedup.minhash import MinHasher
from synth.dedup.text import (exact_hashes, fmix64, id_hash, jaccard, normalise_batch, shingles_of_code_points,
                              sorted_sets)

_U64 = np.uint64
_TAG_EXACT = _U64(0xE7AC7E7AC7E7AC7)
_TAG_ID = _U64(0x1D1D1D1D1D1D1D1D)

# Components up to this size verify every pair (catches pairs whose only shared LSH
# bucket also held a false candidate); bigger ones verify their LSH edges.
ALL_PAIRS_MAX = 48
# In bigger components, a member not LSH-linked to any representative is compared
# with at most this many of them before it becomes a representative itself.
MAX_REPRESENTATIVE_CHECKS = 16


REMOVED_COLUMNS = ("duplicate_of", "similarity", "reason")
EXACT = "exact_duplicate"
NEAR = "near_duplicate"



@functools.lru_cache(maxsize=8)
def _minhasher(num_perm: int, seed: int) -> MinHasher:
    return MinHasher(num_perm, seed)



def id_strings(column: pa.ChunkedArray | pa.Array, id_field: str) -> pa.ChunkedArray | pa.Array:
    if column.null_count:
        raise ValueError(f"id field {id_field!r} has {column.null_count} null value(s); ids must be set")
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.string())
    return column


def ids_as_str(column: pa.ChunkedArray | pa.Array, id_field: str) -> list[str]:
    return id_strings(column, id_field).to_pylist()


def _texts(column: pa.ChunkedArray | pa.Array) -> list[str]:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)):
        column = pc.cast(column, pa.string())
    return column.to_pylist()


def id_nodes(ids: list[str]) -> np.ndarray:
    return np.fromiter((id_hash(i) for i in ids), dtype=np.uint64, count=len(ids))



def band_rows(batch: pa.Table, text_field: str, id_field: str, config: DedupConfig) -> pa.Table:
    bands, rows = config.banding()
    ids = ids_as_str(batch[id_field], id_field)
    nodes = id_nodes(ids)
    cps, lengths = normalise_batch(_texts(batch[text_field]))
    present = lengths > 0
    keys = [fmix64(nodes ^ _TAG_ID)]
    owners = [nodes]
    if present.any():
        hasher = _minhasher(config.num_perm, config.seed)
        hashes, counts = shingles_of_code_points(cps, lengths, config.shingle, config.ngram)
        band_keys = hasher.band_keys(hasher.signatures(hashes, counts), bands, rows)[:, present]
        exact = exact_hashes(cps, lengths)[present]
        present_nodes = nodes[present]
        keys += [band_keys.ravel(), fmix64(exact ^ _TAG_EXACT)]
        owners += [np.tile(present_nodes, bands), present_nodes]
    return pa.table({"key": np.concatenate(keys), "node": np.concatenate(owners)})


def bucket_edges(batch: pa.Table) -> pa.Table:
    """Candidate edges from runs of equal keys (the block holds every row of its keys)."""
    empty = pa.table({"u": pa.array([], pa.uint64()), "v": pa.array([], pa.uint64())})
    key = batch["key"].to_numpy()
    if len(key) < 2:
        return empty
    order = np.argsort(key)
    key = key[order]
    shared = np.flatnonzero(key[1:] == key[:-1])  # i where rows i and i+1 share a key
    if not len(shared):
        return empty
    # Only rows in runs of two or more make edges: most keys are unique, so the rest of the
    # work is on a few rows (each whole run stays together), sorted by key, then node.
    in_run = np.zeros(len(key), dtype=bool)
    in_run[shared] = True
    in_run[shared + 1] = True
    rows = np.flatnonzero(in_run)
    key, node = key[rows], batch["node"].to_numpy()[order[rows]]
    by_node = np.lexsort((node, key))
    key, node = key[by_node], node[by_node]
    same = key[1:] == key[:-1]
    run_start = np.flatnonzero(np.concatenate(([True], ~same)))
    run_len = np.diff(np.append(run_start, len(key)))
    first = np.repeat(run_start, run_len)
    others = np.flatnonzero(first != np.arange(len(key)))
    u = np.concatenate((node[:-1][same], node[first[others]]))  # chain, then star
    v = np.concatenate((node[1:][same], node[others]))
    u, v = np.minimum(u, v), np.maximum(u, v)  # u == v: the same id twice
    u, v = unique_pairs(u, v)
    return pa.table({"u": u, "v": v})


def unique_pairs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (u, v) pairs, sorted by u then v: what `np.unique(np.stack((u, v), 1), axis=0)`
    gives, ~10x faster (a lexsort instead of sorting rows as opaque bytes)."""
    if not len(u):
        return u[:0], v[:0]
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    first = np.concatenate(([True], (u[1:] != u[:-1]) | (v[1:] != v[:-1])))
    return u[first], v[first]



def candidate_rows(
    batch: pa.Table, text_field: str, id_field: str, config: DedupConfig, candidates: tuple[np.ndarray, np.ndarray]
) -> pa.Table:
    cand_nodes, cand_comp = candidates
    ids = ids_as_str(batch[id_field], id_field)
    nodes = id_nodes(ids)
    pos = np.minimum(np.searchsorted(cand_nodes, nodes), len(cand_nodes) - 1)
    hit = cand_nodes[pos] == nodes
    rows = np.flatnonzero(hit)
    raw = _texts(batch[text_field])
    cps, lengths = normalise_batch([raw[i] for i in rows])
    keep = lengths > 0  # empty texts have no code points, so `cps` stays as it is
    rows, lengths = rows[keep], lengths[keep]
    hashes, counts = shingles_of_code_points(cps, lengths, config.shingle, config.ngram)
    n_docs = len(rows)
    if config.verify:
        # Sorted unique 32-bit shingle hashes per document, as list<uint32>.
        h32, offsets = sorted_sets(hashes, counts)
        offsets = offsets.astype(np.int32)
    else:
        sig = _minhasher(config.num_perm, config.seed).signatures(hashes, counts).T  # (docs, num_perm)
        h32 = np.ascontiguousarray(sig).ravel()
        offsets = (np.arange(n_docs + 1) * config.num_perm).astype(np.int32)
    features = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(h32, pa.uint32()))
    return pa.table(
        {
            "comp": pa.array(cand_comp[pos[rows]], pa.int64()),
            "node": pa.array(nodes[rows], pa.uint64()),
            "id": pa.array([ids[i] for i in rows], pa.string()),
            "length": pa.array([len(raw[i]) for i in rows], pa.int64()),
            "exact": pa.array(exact_hashes(cps, lengths), pa.uint64()),
            "features": features,
        }
    )


def verify_components(batch: pa.Table, config: DedupConfig, large_edges: tuple[np.ndarray, np.ndarray, np.ndarray]) -> pa.Table:
    """Verify candidate pairs, cluster, pick representatives. The block holds whole components."""
    large_comp, large_u, large_v = large_edges
    out_id: list[str] = []
    out_of: list[str] = []
    out_sim: list[float] = []
    out_reason: list[str] = []
    if batch.num_rows:
        order = np.argsort(batch["comp"].to_numpy(), kind="stable")
        batch = batch.take(order)
        comp = batch["comp"].to_numpy()
        nodes = batch["node"].to_numpy()
        ids = batch["id"].to_pylist()
        lengths = batch["length"].to_pylist()
        exact = batch["exact"].to_numpy()
        feats_col = batch["features"].combine_chunks()
        flat = feats_col.values.to_numpy()
        offs = feats_col.offsets.to_numpy()
        feats = [flat[offs[i] : offs[i + 1]] for i in range(len(offs) - 1)]
        bounds = np.flatnonzero(np.concatenate(([True], comp[1:] != comp[:-1], [True])))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            members = list(range(lo, hi))
            if len(members) < 2:
                continue
            _cluster_component(
                members, ids, lengths, exact, feats, nodes, comp[lo], config, (large_comp, large_u, large_v),
                out_id, out_of, out_sim, out_reason,
            )
    return pa.table(
        {
            "id": pa.array(out_id, pa.string()),
            "duplicate_of": pa.array(out_of, pa.string()),
            "similarity": pa.array(out_sim, pa.float64()),
            "reason": pa.array(out_reason, pa.string()),
        }
    )


def _cluster_component(
    members, ids, lengths, exact, feats, nodes, comp_id, config, large, out_id, out_of, out_sim, out_reason
) -> None:
    local = {m: k for k, m in enumerate(members)}
    if len(members) <= ALL_PAIRS_MAX:
        pairs = [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]
    else:
        large_comp, large_u, large_v = large
        lo, hi = np.searchsorted(large_comp, [comp_id, comp_id + 1])
        by_node = {int(nodes[m]): m for m in members}
        pairs = [
            (by_node[int(a)], by_node[int(b)])
            for a, b in zip(large_u[lo:hi], large_v[lo:hi])
            if int(a) in by_node and int(b) in by_node
        ]
    sims: dict[tuple[int, int], float] = {}

    def similarity(a: int, b: int) -> float:
        if exact[a] == exact[b]:
            return 1.0
        pair = (a, b) if a < b else (b, a)
        if pair not in sims:
            if config.verify:
                sims[pair] = jaccard(feats[a], feats[b])
            else:
                sims[pair] = float(np.count_nonzero(feats[a] == feats[b])) / config.num_perm
        return sims[pair]

    adjacent: dict[int, set[int]] = {m: set() for m in members}
    eu, ev = [], []
    for a, b in pairs:
        if similarity(a, b) >= config.threshold:
            eu.append(local[a])
            ev.append(local[b])
            adjacent[a].add(b)
            adjacent[b].add(a)
    if not eu:
        return
    roots = connected_components(len(members), np.array(eu), np.array(ev))
    for root in np.unique(roots):
        cluster = [members[k] for k in np.flatnonzero(roots == root)]
        if len(cluster) < 2:
            continue
        # Members in keep order; each joins the first representative it is verified
        # similar to, or becomes a representative. So every removed row is within the
        # threshold of its duplicate_of, even when union-find chained a cluster
        # (A~B, B~C, A≁C keeps A and C, removes B as a duplicate of A).
        ordered = sorted(cluster, key=keep_order(ids, lengths, config.keep))
        reps: list[int] = []
        for m in ordered:
            rep = next((r for r in reps if r in adjacent[m]), None)
            if rep is None:
                for r in reps[:MAX_REPRESENTATIVE_CHECKS]:  # pairs the LSH edges did not cover
                    if similarity(m, r) >= config.threshold:
                        rep = r
                        break
            if rep is None:
                reps.append(m)
                continue
            out_id.append(ids[m])
            out_of.append(ids[rep])
            out_sim.append(similarity(m, rep))
            out_reason.append(EXACT if exact[m] == exact[rep] else NEAR)



def mark_rows(batch: pa.Table, id_field: str, removed: tuple[np.ndarray, pa.Table], want_removed: bool | None) -> pa.Table:
    removed_nodes, removed_table = removed
    id_column = id_strings(batch[id_field], id_field)
    nodes = id_nodes(id_column.to_pylist())
    if len(removed_nodes):
        pos = np.minimum(np.searchsorted(removed_nodes, nodes), len(removed_nodes) - 1)
        hit = removed_nodes[pos] == nodes
    else:
        pos = np.zeros(len(nodes), dtype=np.int64)
        hit = np.zeros(len(nodes), dtype=bool)
    if hit.any():  # guard against a 64-bit id-hash collision: compare the ids themselves
        hits = np.flatnonzero(hit)
        stored = pc.cast(removed_table["id"].take(pa.array(pos[hits], pa.int64())), pa.large_string())
        mine = pc.cast(id_column.take(pa.array(hits, pa.int64())), pa.large_string())
        same = pc.equal(stored, mine).to_numpy(zero_copy_only=False).astype(bool)
        hit[hits[~same]] = False
    if want_removed is None:  # every row, marked (mark_duplicates)
        out = batch
        for name in REMOVED_COLUMNS:
            if name in out.column_names:
                out = out.drop_columns([name])
        take = pa.array(np.where(hit, pos, 0), pa.int64())
        info = removed_table.take(take) if len(removed_table) else None
        mask = pa.array(~hit)
        blank = {"duplicate_of": pa.scalar("", pa.string()), "similarity": pa.scalar(0.0, pa.float64()),
                 "reason": pa.scalar("", pa.string())}
        for name in REMOVED_COLUMNS:
            if info is None:
                column = pa.array([blank[name].as_py()] * len(batch), blank[name].type)
            else:
                column = pc.if_else(mask, blank[name], pc.cast(info[name], blank[name].type))
            out = out.append_column(name, column)
        return out
    if not want_removed:
        return batch.filter(pa.array(~hit))
    rows = np.flatnonzero(hit)
    out = batch.take(pa.array(rows, pa.int64()))
    for name in REMOVED_COLUMNS:
        if name in out.column_names:
            out = out.drop_columns([name])
    info = removed_table.take(pa.array(pos[rows], pa.int64()))
    for name in REMOVED_COLUMNS:
        out = out.append_column(name, info[name])
    return out



def empty_removed() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([], pa.string()),
            "duplicate_of": pa.array([], pa.string()),
            "similarity": pa.array([], pa.float64()),
            "reason": pa.array([], pa.string()),
        }
    )




# ---------------------------------------------------------------- between the passes


class Components:
    """Candidate documents cut into connected components: `candidates` (sorted node hashes,
    their component) goes to `candidate_rows`, `large_edges` (component, u, v of the LSH
    edges in components above ALL_PAIRS_MAX, by component) to `verify_components`."""

    def __init__(self, candidates: tuple[np.ndarray, np.ndarray], large_edges: tuple[np.ndarray, np.ndarray, np.ndarray],
                 edges: int) -> None:
        self.candidates = candidates
        self.large_edges = large_edges
        self.edges = edges

    def __str__(self) -> str:
        nodes, roots = self.candidates
        return f"{self.edges} candidate edges among {len(nodes)} documents in {len(np.unique(roots))} components"


def candidate_components(edges: pa.Table | None, id_field: str,
                         duplicate_ids: Callable[[np.ndarray], list[str]]) -> Components | None:
    """The candidate edges of every block (`bucket_edges`) as components; None without edges.
    An edge from a node to itself is an id seen twice: DuplicateIdError, naming the ids
    `duplicate_ids(nodes)` finds for those node hashes."""
    if edges is None or not edges.num_rows:
        return None
    u = edges["u"].to_numpy()
    v = edges["v"].to_numpy()
    u, v = unique_pairs(u, v)
    loops = u == v
    if loops.any():
        dups = duplicate_ids(np.unique(u[loops]))
        raise DuplicateIdError(
            f"id field {id_field!r} is not unique: {', '.join(repr(d) for d in dups)} appear(s) more than once"
        )
    cand_nodes, inverse = np.unique(np.concatenate((u, v)), return_inverse=True)
    ui = inverse[: len(u)]
    roots = connected_components(len(cand_nodes), ui, inverse[len(u):])
    sizes = np.bincount(roots, minlength=len(cand_nodes))
    large = sizes[roots[ui]] > ALL_PAIRS_MAX
    order = np.argsort(roots[ui][large], kind="stable")
    return Components((cand_nodes, roots), (roots[ui][large][order], u[large][order], v[large][order]), len(u))


def ids_with_nodes(batch: pa.Table, id_field: str, nodes: np.ndarray) -> list[str]:
    """The ids of `batch` whose hash is one of `nodes` (to name duplicate ids)."""
    wanted = set(int(n) for n in nodes)
    ids = ids_as_str(batch[id_field], id_field)
    return [i for i, n in zip(ids, id_nodes(ids)) if int(n) in wanted]


def removed_lookup(found: pa.Table | None) -> tuple[np.ndarray, pa.Table]:
    """The removed rows (`verify_components`' output) as `mark_rows` looks them up: their id
    hashes, sorted, and the table in that order."""
    table = found if found is not None and found.num_rows else empty_removed()
    nodes = id_nodes(table["id"].to_pylist())
    order = np.argsort(nodes, kind="stable")
    return nodes[order], table.take(pa.array(order, pa.int64()))
