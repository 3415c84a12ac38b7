"""Ranking metrics from the 0-based rank of each query's target among its candidates."""

from __future__ import annotations

import numpy as np


def ranking_metrics(ranks: np.ndarray, ks=(10, 50, 100)) -> dict[str, float]:
    """Recall@k and NDCG@k for each k, and MRR, averaged over queries.

    With one relevant item per query, Recall@k is the share of targets ranked in the top k and
    NDCG@k = 1 / log2(rank + 2) when rank < k, else 0.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {**{f"recall@{k}": float("nan") for k in ks}, **{f"ndcg@{k}": float("nan") for k in ks},
                "mrr": float("nan")}
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(ranks < k))
    for k in ks:
        out[f"ndcg@{k}"] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))
    out["mrr"] = float(np.mean(1.0 / (ranks + 1.0)))
    return out
