"""The evaluator every model goes through: full-corpus ranking per target domain.

For each query, every item of the target domain is scored (never a sample of negatives); items
the user already interacted with are left out (``exclude_seen``), except the target itself; the
target's rank gives Recall@k, NDCG@k and MRR. Results are broken down by slice and domain.
A model plugs in as a ``Scorer``: ``score(queries, candidate_rows) -> (queries, candidates)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.features import Catalogue, Examples
from crossrec.metrics import (
    INTERVAL_METRICS,
    paired_mean_difference,
    per_query,
    resampled_means,
)

TOWERS = "crossrec"  # the row of crossrec's towers alone (the ``--models`` name and every report's)
SERVED = "served"  # the row of the served list: the ``recommender``'s answer (towers + sources + ranker)


class Scorer(Protocol):
    name: str

    def score(self, queries: Examples, candidate_rows: np.ndarray) -> np.ndarray: ...


@dataclass
class QuerySet:
    """Queries of one slice, with what each user has already seen."""

    slice: str
    examples: Examples
    seen: list[np.ndarray] = field(default_factory=list)  # item rows to exclude, per query

    def sample(self, n: int | None, seed: int = 0) -> QuerySet:
        """At most ``n`` of the queries, drawn once at random (all of them when ``n`` is None)."""
        if n is None or len(self.examples) <= n:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.examples), n, replace=False))
        return QuerySet(self.slice, self.examples.subset(keep), [self.seen[i] for i in keep] if self.seen else [])


def seen_rows(known: pd.DataFrame, users: np.ndarray, catalogue: Catalogue) -> list[np.ndarray]:
    rows = catalogue.rows(known[schema.DOMAIN], known[schema.ITEM_ID])
    by_user = pd.Series(rows).groupby(known[schema.USER_ID].to_numpy()).agg(lambda s: np.unique(s.to_numpy()))
    empty = np.zeros(0, np.int32)
    return [by_user.get(u, empty) for u in users]


def target_ranks(scorer: Scorer, queries: QuerySet, catalogue: Catalogue, *, exclude_seen: bool = True,
                 chunk: int = 1024) -> np.ndarray:
    """0-based rank of each query's target among the items of its target domain."""
    ex = queries.examples
    ranks = np.full(len(ex), -1, np.int64)
    item_domain = catalogue.item_domain_name
    target_domain = item_domain[ex.target]
    for domain in pd.unique(target_domain):
        candidates = np.flatnonzero(item_domain == domain)  # item rows of the domain
        column = np.full(catalogue.size, -1, np.int64)
        column[candidates] = np.arange(len(candidates))
        idx = np.flatnonzero(target_domain == domain)
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            scores = np.asarray(scorer.score(ex.subset(part), candidates), dtype=np.float64)
            target_col = column[ex.target[part]]
            target_score = scores[np.arange(len(part)), target_col]
            if exclude_seen and queries.seen:
                for i, q in enumerate(part):
                    cols = column[queries.seen[q]]
                    cols = cols[(cols >= 0) & (cols != target_col[i])]
                    scores[i, cols] = -np.inf
            # a NaN score is the worst there is: a broken model must never rank a target first
            broken = np.isnan(target_score)
            scores[np.isnan(scores)] = -np.inf
            target_score = np.where(broken, -np.inf, target_score)
            # ties count half, so a constant scorer ranks a target in the middle, not first
            ranks[part] = (scores > target_score[:, None]).sum(1) + ((scores == target_score[:, None]).sum(1) - 1) // 2
            ranks[part[broken]] = len(candidates) - 1
    return ranks


def rank_frame(model: str, slice_name: str, target_domains: np.ndarray, ranks: np.ndarray) -> pd.DataFrame:
    """One model's ranks on one query set, in the layout ``pooled_metrics`` and
    ``paired_comparisons`` read: model, slice, domain, query (its index in the set), rank."""
    return pd.DataFrame({"model": model, "slice": slice_name, "domain": target_domains,
                         "query": np.arange(len(ranks)), "rank": ranks})


def evaluate(scorers: list[Scorer], query_sets: list[QuerySet], catalogue: Catalogue, *, ks=(10, 50, 100),
             exclude_seen: bool = True, ranks_out: list | None = None) -> pd.DataFrame:
    """One row per (model, slice, domain) plus an "all" domain row per (model, slice), with 95%
    bootstrap intervals over queries (``ndcg@10_lo``/``_hi``...). ``ranks_out``, when given, gets
    one frame per (model, query set) with each query's rank."""
    frames = []
    for scorer in scorers:
        for queries in query_sets:
            if len(queries.examples) == 0:
                continue
            ranks = target_ranks(scorer, queries, catalogue, exclude_seen=exclude_seen)
            frames.append(rank_frame(scorer.name, queries.slice, catalogue.item_domain_name[queries.examples.target],
                                     ranks))
    if ranks_out is not None:  # every query's rank, for paired comparisons
        ranks_out.extend(frames)
    if not frames:
        return pd.DataFrame()
    return pooled_metrics(pd.concat(frames, ignore_index=True), ks).drop(columns="seeds")


class PopularityScorer:
    """Baseline: items ranked by their number of training interactions, per domain."""

    name = "popularity"

    def __init__(self, train: pd.DataFrame, catalogue: Catalogue):
        rows = catalogue.rows(train[schema.DOMAIN], train[schema.ITEM_ID])
        self.counts = np.bincount(rows, minlength=catalogue.size).astype(np.float64)

    def score(self, queries: Examples, candidate_rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts[candidate_rows], (len(queries), len(candidate_rows))).copy()


class ItemKNNScorer:
    """Reference: item-to-item cosine similarity of training co-occurrence (users as features);
    a candidate scores the sum of its similarities to the query's history items."""

    name = "item_knn"

    def __init__(self, train: pd.DataFrame, catalogue: Catalogue):
        from scipy import sparse

        rows = catalogue.rows(train[schema.DOMAIN], train[schema.ITEM_ID])
        users = pd.factorize(train[schema.USER_ID])[0]
        matrix = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, users)),
                                   shape=(catalogue.size, users.max() + 1 if len(users) else 1))
        matrix.data[:] = 1.0  # repeated interactions count once
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        self.normalised = sparse.diags(1.0 / norms) @ matrix  # (items, users), rows of unit length

    def score(self, queries: Examples, candidate_rows: np.ndarray) -> np.ndarray:
        from scipy import sparse

        n = len(queries)
        hist = queries.history
        q, pos = np.nonzero(hist)
        profile = sparse.csr_matrix((np.ones(len(q), np.float32), (q, hist[q, pos])),
                                    shape=(n, self.normalised.shape[0]))
        # (n, items) @ (items, users) @ (users, candidates)
        return np.asarray(((profile @ self.normalised) @ self.normalised[candidate_rows].T).todense())


class EmbeddingScorer:
    """Any two-tower model: dot product of query and item embeddings."""

    def __init__(self, name: str, query_fn, item_embeddings: np.ndarray):
        self.name = name
        self.query_fn = query_fn  # Examples -> (n, e)
        self.item_embeddings = item_embeddings  # (catalogue.size, e)

    def score(self, queries: Examples, candidate_rows: np.ndarray) -> np.ndarray:
        return self.query_fn(queries) @ self.item_embeddings[candidate_rows].T


def query_values(ranks: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each (model, slice, query)'s value of ``metric``, averaged over training seeds when
    ``ranks`` has a ``seed`` column (one run: the value itself); with the query's domain."""
    frame = ranks.assign(value=per_query(ranks["rank"].to_numpy(), metric))
    return (frame.groupby(["model", "slice", "query"], sort=True)
            .agg(domain=("domain", "first"), value=("value", "mean")).reset_index())


def pooled_metrics(ranks: pd.DataFrame, ks=(10, 50, 100)) -> pd.DataFrame:
    """``evaluate``'s table from ranks collected over several training seeds (a ``seed`` column):
    each query's value averaged over the seeds, then over queries; the intervals resample queries
    (so they include the seeds' spread on each query). With one seed it equals ``evaluate``'s."""
    names = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    values = {m: query_values(ranks, m) for m in dict.fromkeys(names + list(INTERVAL_METRICS))}
    keys = values["mrr"][["model", "slice", "query", "domain"]]
    seeds = ranks["seed"].nunique() if "seed" in ranks else 1
    rows = []
    for (model, slice_name), group in keys.groupby(["model", "slice"], sort=False):
        for domain in sorted(group["domain"].unique()) + ["all"]:
            index = group.index if domain == "all" else group.index[group["domain"] == domain]
            row = {"model": model, "slice": slice_name, "domain": domain, "queries": len(index), "seeds": seeds}
            row.update({m: float(values[m].loc[index, "value"].mean()) for m in names})
            means = resampled_means(np.stack([values[m].loc[index, "value"].to_numpy() for m in INTERVAL_METRICS],
                                             axis=1))
            for i, m in enumerate(INTERVAL_METRICS):
                row[f"{m}_lo"], row[f"{m}_hi"] = (float(v) for v in np.percentile(means[:, i], [2.5, 97.5]))
            rows.append(row)
    return pd.DataFrame(rows)


def paired_comparisons(ranks: pd.DataFrame, reference: str = TOWERS, metric: str = "ndcg@10") -> pd.DataFrame:
    """``reference`` against every other model on the same queries, per slice and domain (and
    "all"): the difference in ``metric`` with its paired 95% bootstrap interval, the relative
    difference, and the share of resamples in which ``reference`` is ahead. ``ranks`` is what
    ``evaluate(..., ranks_out=...)`` collected, concatenated (with a ``seed`` column when pooled
    over training seeds: each query's value is then its mean over the seeds)."""
    rows = []
    if ranks.empty or reference not in set(ranks["model"]):
        return pd.DataFrame(rows)
    values = query_values(ranks, metric)
    for (slice_name, other), group in values[values["model"] != reference].groupby(["slice", "model"], sort=True):
        ours = values[(values["model"] == reference) & (values["slice"] == slice_name)]
        if ours.empty:
            continue
        mine = ours.set_index("query")["value"]
        theirs = group.set_index("query")
        for domain in sorted(theirs["domain"].unique()) + ["all"]:
            part = theirs if domain == "all" else theirs[theirs["domain"] == domain]
            a, b = mine.loc[part.index].to_numpy(), part["value"].to_numpy()
            result = paired_mean_difference(a, b)
            base = float(np.mean(b))
            rows.append({"model": reference, "versus": other, "slice": slice_name, "domain": domain,
                         "queries": len(part), "metric": metric, **result,
                         "relative": result["diff"] / base if base > 0 else float("nan")})
    return pd.DataFrame(rows)
