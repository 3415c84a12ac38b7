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


INTERVAL_METRICS = ("ndcg@10", "recall@10", "recall@50")


def per_query(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each query's value of ``metric`` (``recall@k``, ``ndcg@k`` or ``mrr``); their mean is the metric."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if metric == "mrr":
        return 1.0 / (ranks + 1.0)
    name, _, k = metric.partition("@")
    if name == "recall":
        return (ranks < int(k)).astype(np.float64)
    if name == "ndcg":
        return np.where(ranks < int(k), 1.0 / np.log2(ranks + 2.0), 0.0)
    raise ValueError(f"unknown metric {metric!r}")


def resampled_means(values: np.ndarray, *, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """(samples, k) means of the k columns of ``values`` (n, k) over ``samples`` bootstrap resamples
    of its n rows (the same resamples for every column); memory stays bounded for any n."""
    n = len(values)
    rng = np.random.default_rng(seed)
    means = np.empty((samples, values.shape[1]))
    step = max(1, 2_000_000 // max(n, 1))
    for start in range(0, samples, step):
        index = rng.integers(0, n, size=(min(step, samples - start), n))
        means[start:start + len(index)] = values[index].mean(axis=1)
    return means


def bootstrap_intervals(ranks: np.ndarray, metrics=INTERVAL_METRICS, *, samples: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict[str, float]:
    """Percentile bootstrap interval over queries of each metric: ``<metric>_lo`` and ``<metric>_hi``.

    The resamples depend only on the number of queries and ``seed``, so two models evaluated on the
    same queries are resampled identically (their intervals are paired)."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        return {f"{m}_{side}": float("nan") for m in metrics for side in ("lo", "hi")}
    means = resampled_means(np.stack([per_query(ranks, m) for m in metrics], axis=1), samples=samples, seed=seed)
    tail = (1.0 - level) / 2 * 100
    out = {}
    for i, m in enumerate(metrics):
        out[f"{m}_lo"], out[f"{m}_hi"] = (float(v) for v in np.percentile(means[:, i], [tail, 100 - tail]))
    return out


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, metric: str = "ndcg@10", *, samples: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """``metric`` of A minus that of B on the same queries (``ranks_a[i]`` and ``ranks_b[i]`` rank
    query i's target), with a paired percentile-bootstrap interval and the share of resamples in
    which A is ahead: ``diff``, ``diff_lo``, ``diff_hi``, ``a_ahead``."""
    return paired_mean_difference(per_query(ranks_a, metric), per_query(ranks_b, metric), samples=samples,
                                  level=level, seed=seed)


def paired_mean_difference(a: np.ndarray, b: np.ndarray, *, samples: int = 1000, level: float = 0.95,
                           seed: int = 0) -> dict[str, float]:
    """The mean of per-query values ``a`` minus that of ``b`` (same queries, same order), with a
    paired percentile-bootstrap interval and the share of resamples in which ``a`` is ahead."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} vs {len(b)} queries; both must rank the same queries")
    if len(a) == 0:
        return {"diff": float("nan"), "diff_lo": float("nan"), "diff_hi": float("nan"), "a_ahead": float("nan")}
    delta = a - b
    means = resampled_means(delta[:, None], samples=samples, seed=seed)[:, 0]
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {"diff": float(delta.mean()), "diff_lo": float(lo), "diff_hi": float(hi), "a_ahead": float(np.mean(means > 0))}
