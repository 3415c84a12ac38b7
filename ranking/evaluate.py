"""Re-ranking evaluation: several orders of the *same* candidate lists, side by side.

For every test query the retrieval model's top-K list is fixed; each model only reorders it. The
target's position in each order gives Recall@k, NDCG@k and MRR (a target retrieval missed counts
as a miss for every order, so ``in_list`` is the ceiling all share). Rating RMSE is measured on
the test targets that have a rating, for the models that predict one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ranking.candidates import CandidateLists

MISS = 10**9  # the rank of a target that is not in the list

Order = Callable[[CandidateLists], np.ndarray]  # lists -> (n, L) scores, higher first


def list_ranks(lists: CandidateLists, scores: np.ndarray) -> np.ndarray:
    """0-based rank of each query's target in its list under ``scores`` (ties count half)."""
    scores = np.where(lists.candidates > 0, scores, -np.inf)
    hit = lists.labels > 0
    found = hit.any(axis=1)
    target_score = np.where(hit, scores, -np.inf).max(axis=1)
    higher = (scores > target_score[:, None]).sum(axis=1)
    ties = (scores == target_score[:, None]).sum(axis=1) - 1
    return np.where(found, higher + ties // 2, MISS)


def rerank_metrics(orders: dict[str, Order], slices: list[tuple[str, CandidateLists]], catalogue, *,
                   ks=(10,), ratings: dict[str, Order] | None = None) -> pd.DataFrame:
    """One row per (model, slice, domain) plus an "all" domain row per (model, slice)."""
    from crossrec.metrics import ranking_metrics

    rows = []
    for name, order in orders.items():
        for slice_name, lists in slices:
            if len(lists) == 0:
                continue
            ranks = list_ranks(lists, np.asarray(order(lists)))
            predicted = np.asarray(ratings[name](lists)) if ratings and name in ratings else None
            domains = catalogue.item_domain_name[lists.examples.target]
            for domain in sorted(pd.unique(domains)) + ["all"]:
                mask = np.ones(len(ranks), bool) if domain == "all" else domains == domain
                row = {"model": name, "slice": slice_name, "domain": domain, "queries": int(mask.sum()),
                       "in_list": float(np.mean(ranks[mask] < MISS)), **ranking_metrics(ranks[mask], ks)}
                row["rmse"] = _rmse(predicted, lists.examples.rating, mask)
                rows.append(row)
    return pd.DataFrame(rows)


def _rmse(predicted: np.ndarray | None, actual: np.ndarray | None, mask: np.ndarray) -> float:
    if predicted is None or actual is None:
        return float("nan")
    known = mask & ~np.isnan(actual)
    if not known.any():
        return float("nan")
    return float(np.sqrt(np.mean((predicted[known] - actual[known]) ** 2)))


def source_recall(slices: list[tuple[str, CandidateLists]], catalogue) -> pd.DataFrame:
    """Per slice and domain: the share of targets each source's own list holds (``towers``: the
    towers' top-K; each candidate source's top-k), the merged list's share and its mean length."""
    rows = []
    for slice_name, lists in slices:
        if len(lists) == 0:
            continue
        target = lists.examples.target[:, None]
        domains = catalogue.item_domain_name[lists.examples.target]
        found = {name: ((rows_ == target) & (rows_ > 0)).any(axis=1) for name, rows_ in lists.proposals.items()}
        found["merged"] = ((lists.candidates == target) & (lists.candidates > 0)).any(axis=1)
        length = {name: (rows_ > 0).sum(axis=1) for name, rows_ in lists.proposals.items()}
        length["merged"] = (lists.candidates > 0).sum(axis=1)
        for domain in sorted(pd.unique(domains)) + ["all"]:
            mask = np.ones(len(lists), bool) if domain == "all" else domains == domain
            for name in found:
                rows.append({"slice": slice_name, "domain": domain, "source": name, "queries": int(mask.sum()),
                             "recall": float(found[name][mask].mean()), "list_length": float(length[name][mask].mean())})
    return pd.DataFrame(rows)
