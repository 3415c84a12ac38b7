"""Candidate sources besides the two-tower: item-to-item tables built from training interactions.

Each source is a ``NeighbourTable``: for every item row, its strongest neighbours *in each domain*
(``per_domain`` of them per domain, so a history in one domain always reaches the others) and
their weights. A query is only a history, so a brand-new user is served as well as a known one:
its score for item ``c`` is ``sum_h w(h) * table[h, c]`` over the history items ``h``, with a
per-position weight ``w`` (recency for co-visitation, uniform for propagation). The same tables
go into the ranker's graph (``ranking.features.RankingFeatures``), where they give both the
candidates of the served list and the features that say how strongly each source backs each
candidate.

- ``co_visitation``: items that follow one another in users' sequences, within ``window``
  positions (weight 1/distance, both directions, within and across domains), normalised by
  ``sqrt(n_a * n_b)`` so that popular items do not neighbour everything.
- ``propagation``: label propagation over the user-item graph as a random walk (RP3beta,
  Paudel et al. 2016; Christoffel et al. 2015): from each history item to the users who
  interacted with it and on to their items, ``W = P(i->u) P(u->i)``, each column divided by
  the item's degree ** ``beta`` (RP3beta's popularity penalty; 0 by default: on the built-in
  data and on Amazon Arts/Office beta 0 reached the most held-out targets, 0.5 and 1 fewer). A
  user's interests spread from the users most like them, which fills a domain the user has no
  history in.
- ``item_knn``: item-to-item cosine of the items' user sets (``|U_a & U_b| / sqrt(|U_a| |U_b|)``,
  the item-kNN baseline of ``crossrec evaluate`` cut to each item's strongest neighbours per
  domain), every history position weighing the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from crossrec import schema
from crossrec.features import Catalogue, in_user_order
from crossrec.ranking_features import CANDIDATE_SOURCES, CO_VISITATION, ITEM_KNN, PROPAGATION
from ranking.candidates import best_columns, domain_chunks


@dataclass
class NeighbourTable:
    """``neighbours[r]``: the item rows most related to item row ``r`` (0 = empty slot), with
    ``weights[r]``; row 0 (padding) has none. ``position_decay``: how a history position ``t``
    from the most recent (t = 0) weighs, ``1 / (1 + t) ** position_decay`` (0 = uniform)."""

    name: str
    neighbours: np.ndarray  # (size, M) int32
    weights: np.ndarray  # (size, M) float32
    position_decay: float = 0.0

    @property
    def size(self) -> int:
        return len(self.neighbours)

    def position_weights(self, length: int) -> np.ndarray:
        """(length,) weight of each history column (right-aligned: the last is the most recent)."""
        distance = np.arange(length - 1, -1, -1, dtype=np.float32)
        return (1.0 / (1.0 + distance) ** self.position_decay).astype(np.float32)

    def scores(self, history: np.ndarray) -> sp.csr_matrix:
        """(n, size) sparse: each query's summed neighbour weight per item row (0 = not reached)."""
        history = np.asarray(history, np.int32)
        n, length = history.shape
        weight = self.weights[history] * self.position_weights(length)[None, :, None]  # (n, H, M)
        weight = np.where(history[..., None] > 0, weight, 0.0)
        columns = self.neighbours[history]
        query = np.broadcast_to(np.arange(n)[:, None, None], columns.shape)
        keep = (columns > 0) & (weight > 0)
        out = sp.coo_matrix((weight[keep], (query[keep], columns[keep])), shape=(n, self.size))
        return out.tocsr()  # duplicates summed


def _top_per_domain(matrix: sp.csr_matrix, catalogue: Catalogue, per_domain: int, name: str,
                    position_decay: float) -> NeighbourTable:
    """Keeps each row's ``per_domain`` largest entries in each catalogue domain (not the row itself)."""
    matrix = matrix.tocsr()
    matrix.setdiag(0)
    matrix.eliminate_zeros()
    domain = catalogue.text_domain  # (size,) index into domain_names; row 0 -> 0 (never a column)
    width = per_domain * len(catalogue.domain_names)
    neighbours = np.zeros((catalogue.size, width), np.int32)
    weights = np.zeros((catalogue.size, width), np.float32)
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    for r in range(1, catalogue.size):
        cols, vals = indices[indptr[r]:indptr[r + 1]], data[indptr[r]:indptr[r + 1]]
        if len(cols) == 0:
            continue
        for d in range(len(catalogue.domain_names)):
            in_domain = domain[cols] == d
            c, v = cols[in_domain], vals[in_domain]
            if len(c) > per_domain:
                top = np.argpartition(-v, per_domain - 1)[:per_domain]
                c, v = c[top], v[top]
            order = np.argsort(-v, kind="stable")
            neighbours[r, d * per_domain:d * per_domain + len(c)] = c[order]
            weights[r, d * per_domain:d * per_domain + len(c)] = v[order]
    if (weights > 0).any():  # scale-free: the mean kept weight is 1 (orders nothing differently)
        weights /= weights[weights > 0].mean()
    return NeighbourTable(name, neighbours, weights, position_decay)


def _sequence_rows(interactions: pd.DataFrame, catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """Item rows in each user's order, and the user of each (known items only)."""
    frame = in_user_order(interactions)
    rows = catalogue.rows(frame[schema.DOMAIN], frame[schema.ITEM_ID])
    users = frame[schema.USER_ID].to_numpy()
    known = rows > 0
    return rows[known], users[known]


def co_visitation(interactions: pd.DataFrame, catalogue: Catalogue, *, window: int = 3, per_domain: int = 30,
                  position_decay: float = 1.0) -> NeighbourTable:
    rows, users = _sequence_rows(interactions, catalogue)
    a, b, w = [], [], []
    for d in range(1, window + 1):
        same = users[d:] == users[:-d]
        a.append(rows[:-d][same])
        b.append(rows[d:][same])
        w.append(np.full(int(same.sum()), 1.0 / d, np.float32))
    a, b, w = np.concatenate(a), np.concatenate(b), np.concatenate(w)
    size = catalogue.size
    pairs = sp.coo_matrix((np.r_[w, w], (np.r_[a, b], np.r_[b, a])), shape=(size, size)).tocsr()
    count = np.bincount(rows, minlength=size).astype(np.float32)
    norm = 1.0 / np.sqrt(np.maximum(count, 1.0))
    pairs = sp.diags(norm) @ pairs @ sp.diags(norm)
    return _top_per_domain(pairs, catalogue, per_domain, CO_VISITATION, position_decay)


def _user_items(interactions: pd.DataFrame, catalogue: Catalogue, max_user_items: int) -> sp.csr_matrix:
    """(users, size) binary: who interacted with what (repeats count once); a very long user adds
    deg^2 item pairs, so only their ``max_user_items`` most recent interactions are kept."""
    rows, users = _sequence_rows(interactions, catalogue)
    codes, _ = pd.factorize(users)
    if max_user_items:
        from_end = pd.Series(codes).groupby(codes).cumcount(ascending=False).to_numpy()
        rows, codes = rows[from_end < max_user_items], codes[from_end < max_user_items]
    graph = sp.coo_matrix((np.ones(len(rows), np.float32), (codes, rows)),
                          shape=(codes.max() + 1 if len(codes) else 0, catalogue.size)).tocsr()
    graph.data[:] = 1.0
    return graph


def propagation(interactions: pd.DataFrame, catalogue: Catalogue, *, beta: float = 0.0, per_domain: int = 30,
                max_user_items: int = 200) -> NeighbourTable:
    graph = _user_items(interactions, catalogue, max_user_items)
    user_degree = np.asarray(graph.sum(axis=1)).ravel()
    item_degree = np.asarray(graph.sum(axis=0)).ravel()
    to_items = sp.diags(1.0 / np.maximum(user_degree, 1.0)) @ graph  # P(u -> i)
    to_users = sp.diags(1.0 / np.maximum(item_degree, 1.0)) @ graph.T  # P(i -> u)
    walk = (to_users @ to_items).tocsr()  # P(i -> u -> j)
    walk = walk @ sp.diags((1.0 / np.maximum(item_degree, 1.0) ** beta).astype(np.float32))
    return _top_per_domain(walk, catalogue, per_domain, PROPAGATION, 0.0)


def item_knn(interactions: pd.DataFrame, catalogue: Catalogue, *, per_domain: int = 30,
             max_user_items: int = 200) -> NeighbourTable:
    graph = _user_items(interactions, catalogue, max_user_items)
    degree = np.asarray(graph.sum(axis=0)).ravel()
    norm = sp.diags((1.0 / np.sqrt(np.maximum(degree, 1.0))).astype(np.float32))
    cosine = (norm @ (graph.T @ graph) @ norm).tocsr()
    return _top_per_domain(cosine, catalogue, per_domain, ITEM_KNN, 0.0)


def build_sources(interactions: pd.DataFrame, catalogue: Catalogue, names=CANDIDATE_SOURCES, *,
                  per_domain: int = 30) -> list[NeighbourTable]:
    builders = {CO_VISITATION: co_visitation, PROPAGATION: propagation, ITEM_KNN: item_knn}
    return [builders[name](interactions, catalogue, per_domain=per_domain) for name in names]


def propose(table: NeighbourTable, history: np.ndarray, target_domain_names: np.ndarray, catalogue: Catalogue,
            k: int, *, seen: list[np.ndarray] | None = None, keep: np.ndarray | None = None,
            chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top-``k`` item rows of its target domain by ``table`` (only items the table
    reaches; the rest of the row is 0) and their scores, leaving out the query's ``seen`` rows
    (default: its history) except ``keep[q]`` (the true target, when it was seen before)."""
    n = len(history)
    candidates = np.zeros((n, k), np.int32)
    scores = np.zeros((n, k), np.float32)
    for part, pool, column in domain_chunks(catalogue, target_domain_names, chunk):
        dense = table.scores(history[part])[:, pool].toarray()  # (chunk, pool)
        for i, q in enumerate(part):
            leave = column[seen[q] if seen is not None else history[q]]
            if keep is not None:
                leave = leave[leave != column[keep[q]]]
            dense[i, leave[leave >= 0]] = 0.0
        top = min(k, len(pool))
        best = best_columns(dense, top)
        best_scores = np.take_along_axis(dense, best, 1)
        candidates[part, :top] = np.where(best_scores > 0, pool[best], 0)
        scores[part, :top] = np.where(best_scores > 0, best_scores, 0.0)
    return candidates, scores
