"""Candidate lists: what the retrieval model returns for each query, as the ranker sees it.

``mine_candidates`` ranks every item of the query's target domain by the towers' dot product
(the same full-corpus ranking the evaluator uses), leaves out what the user has already seen and
keeps the top K. For training lists the true next item is always in the list (it replaces the
K-th candidate when retrieval missed it) and ``random_negatives`` random items of the domain may
be appended; for evaluation lists it is only there if retrieval found it.

Training lists are mined from training examples only (``ExperimentData.examples``: the train
split), so no validation or test interaction is ever a label or a history item of the ranker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crossrec.features import Catalogue, Examples


@dataclass
class CandidateLists:
    examples: Examples  # one query per list (history, target, target domain, rating)
    query: np.ndarray  # (n, e) the user tower's query embeddings
    candidates: np.ndarray  # (n, L) int32 item rows, 0 = padding
    retrieval_scores: np.ndarray  # (n, L) float32 dot products, -inf for padding
    # each source's own proposals before the merge ("towers" and the candidate sources), (n, k_s)
    proposals: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def labels(self) -> np.ndarray:
        """(n, L) 1.0 where the candidate is the query's true next item."""
        return ((self.candidates == self.examples.target[:, None]) & (self.candidates > 0)).astype(np.float32)

    def ratings(self) -> tuple[np.ndarray, np.ndarray]:
        """(n, L) rating labels and weights: the target's rating where it is known, weight 0 elsewhere."""
        rating = self.examples.rating
        if rating is None:
            zeros = np.zeros(self.candidates.shape, np.float32)
            return zeros, zeros
        known = ~np.isnan(rating)
        weight = self.labels * known[:, None]
        return (np.nan_to_num(rating)[:, None] * weight).astype(np.float32), weight.astype(np.float32)

    def features(self) -> dict[str, np.ndarray]:
        return {"query": self.query, "history": self.examples.history, "candidates": self.candidates}

    def subset(self, mask: np.ndarray) -> CandidateLists:
        return CandidateLists(self.examples.subset(mask), self.query[mask], self.candidates[mask],
                              self.retrieval_scores[mask], {k: v[mask] for k, v in self.proposals.items()})


def domain_chunks(catalogue: Catalogue, target_domain_names: np.ndarray, chunk: int):
    """Per target domain, chunks of the queries that ask for it: (query indices, the domain's
    item rows, the column of every catalogue row among them or -1)."""
    item_domain = catalogue.item_domain_name
    target_domain_names = np.asarray(target_domain_names, object)
    for domain in pd.unique(target_domain_names):
        pool = np.flatnonzero(item_domain == domain)
        pool = pool[pool > 0]
        if len(pool) == 0:
            continue
        column = np.full(catalogue.size, -1, np.int64)
        column[pool] = np.arange(len(pool))
        idx = np.flatnonzero(target_domain_names == domain)
        for start in range(0, len(idx), chunk):
            yield idx[start:start + chunk], pool, column


def best_columns(scores: np.ndarray, top: int) -> np.ndarray:
    """(rows, top) the columns of each row's ``top`` highest scores, best first."""
    if top < scores.shape[1]:
        best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
    else:
        best = np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.argsort(-np.take_along_axis(scores, best, 1), axis=1, kind="stable")
    return np.take_along_axis(best, order, 1)


def mine_candidates(query: np.ndarray, item_embeddings: np.ndarray, examples: Examples, catalogue: Catalogue,
                    k: int, *, seen: list[np.ndarray] | None = None, include_target: bool = False,
                    random_negatives: int = 0, seed: int = 0, chunk: int = 2048) -> CandidateLists:
    """Top-``k`` items of each query's target domain by ``query @ item_embeddings``.

    ``seen``: item rows to leave out per query (default: the query's history); the target itself
    is never left out. ``include_target`` puts the target in every list (training).
    """
    n = len(examples)
    width = k + random_negatives
    candidates = np.zeros((n, width), np.int32)
    scores = np.full((n, width), -np.inf, np.float32)
    rng = np.random.default_rng(seed)
    for part, pool, column in domain_chunks(catalogue, catalogue.item_domain_name[examples.target], chunk):
        top = min(k, len(pool))
        s = query[part] @ item_embeddings[pool].T  # (chunk, pool)
        target_col = column[examples.target[part]]
        for i, q in enumerate(part):
            cols = column[seen[q] if seen is not None else examples.history[q]]
            cols = cols[(cols >= 0) & (cols != target_col[i])]
            s[i, cols] = -np.inf
        best = best_columns(s, top)  # (chunk, top) columns, best first
        if include_target:
            missing = ~(best == target_col[:, None]).any(axis=1)
            best[missing, -1] = target_col[missing]
        candidates[part, :top] = pool[best]
        scores[part, :top] = np.take_along_axis(s, best, 1)
        if random_negatives:
            extra = rng.integers(0, len(pool), size=(len(part), random_negatives))
            extra = np.where(extra == target_col[:, None], (extra + 1) % len(pool), extra)
            candidates[part, k:] = pool[extra]
            scores[part, k:] = np.take_along_axis(s, extra, 1)
    # seen items that fell into the list (possible only when the domain has fewer than k unseen items)
    candidates[np.isneginf(scores)] = 0
    return CandidateLists(examples, query.astype(np.float32), candidates, scores)


def merge_candidates(lists: CandidateLists, extra: dict[str, np.ndarray], item_embeddings: np.ndarray) -> CandidateLists:
    """``lists`` with each source's proposals (``extra``: name -> (n, k_s) item rows, 0 = none)
    appended, duplicates of an earlier candidate dropped (0); every candidate keeps the towers'
    score. ``proposals`` keeps each source's own list (for recall per source)."""
    proposals = {"towers": lists.candidates, **{k: np.asarray(v, np.int32) for k, v in extra.items()}}
    if not extra:
        return CandidateLists(lists.examples, lists.query, lists.candidates, lists.retrieval_scores, proposals)
    extra = list(extra.values())
    candidates = np.concatenate([lists.candidates] + [np.asarray(e, np.int32) for e in extra], axis=1)
    base = lists.candidates.shape[1]
    for j in range(base, candidates.shape[1]):  # later duplicates of any earlier candidate -> 0
        column = candidates[:, j]
        candidates[:, j] = np.where((candidates[:, :j] == column[:, None]).any(axis=1), 0, column)
    added = candidates[:, base:]
    added_scores = np.einsum("ne,nke->nk", lists.query, item_embeddings[added]).astype(np.float32)
    scores = np.concatenate([lists.retrieval_scores, np.where(added > 0, added_scores, -np.inf)], axis=1)
    return CandidateLists(lists.examples, lists.query, candidates, scores.astype(np.float32), proposals)
