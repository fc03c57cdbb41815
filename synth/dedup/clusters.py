"""Union-find over numpy edge lists, and the choice of a cluster's representative."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def connected_components(num_nodes: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Root of every node 0..num_nodes-1 given undirected edges (u[i], v[i]).

    Vectorised union-find (hooking roots onto the smaller root, then pointer
    jumping until flat), so the root of a component is its smallest node index:
    the result depends only on the edge set, not on edge order.
    """
    parent = np.arange(num_nodes, dtype=np.int64)
    if len(u) == 0:
        return parent
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            return parent
        lo = np.minimum(pu[differ], pv[differ])
        hi = np.maximum(pu[differ], pv[differ])
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping: every node points straight at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def keep_order(ids: Sequence[str], lengths: Sequence[int], keep: str) -> Callable[[int], tuple]:
    """Sort key putting the member a cluster prefers to keep first.

    keep="lowest_id": smallest id (string order); keep="longest": longest text, ties
    broken by smallest id. Deterministic for a given cluster.
    """
    if keep == "lowest_id":
        return lambda i: (ids[i],)
    if keep == "longest":
        return lambda i: (-lengths[i], ids[i])
    raise ValueError(f"unknown keep rule {keep!r} (expected 'lowest_id' or 'longest')")
