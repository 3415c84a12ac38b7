"""The shared evaluator and metrics, against values worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from crossrec import schema
from crossrec.evaluation import PopularityScorer, QuerySet, evaluate, target_ranks
from crossrec.features import Catalogue, Examples
from crossrec.metrics import bootstrap_intervals, paired_difference, per_query, ranking_metrics


def test_ranking_metrics_by_hand():
    m = ranking_metrics(np.array([0, 1, 10, 60]), ks=(10, 50))
    assert m["recall@10"] == pytest.approx(2 / 4)
    assert m["recall@50"] == pytest.approx(3 / 4)
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(2) + 1 / np.log2(3)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 61) / 4)


class FixedScorer:
    name = "fixed"

    def __init__(self, scores):
        self.scores = scores  # per item row

    def score(self, queries, candidate_rows):
        return np.tile(self.scores[candidate_rows], (len(queries), 1))


@pytest.fixture
def catalogue():
    items = pd.DataFrame({schema.ITEM_ID: list("abcdxy"), schema.DOMAIN: ["b"] * 4 + ["m"] * 2,
                          schema.TEXT: list("ABCDXY")})
    return Catalogue.build(items, ["b", "m"])  # rows: a1 b2 c3 d4 x5 y6


def queries(targets, seen):
    n = len(targets)
    ex = Examples(np.zeros((n, 2), np.int32), np.array(targets, np.int32), np.ones(n, np.int32),
                  np.array([f"u{i}" for i in range(n)], object), np.ones(n, np.float32))
    return QuerySet("warm", ex, [np.array(s, np.int32) for s in seen])


def test_ranks_cover_only_the_target_domain_and_skip_seen_items(catalogue):
    scorer = FixedScorer(np.array([0, 4.0, 3.0, 2.0, 1.0, 9.0, 8.0]))  # x/y (other domain) score highest
    q = queries([4, 4, 2, 6], [[], [1, 2], [2], [5]])
    # d (row 4) is 4th in books; with a and b seen it is 2nd; a seen target b stays rankable
    assert target_ranks(scorer, q, catalogue, exclude_seen=True).tolist() == [3, 1, 1, 0]
    assert target_ranks(scorer, q, catalogue, exclude_seen=False).tolist() == [3, 3, 1, 1]


def test_ties_rank_in_the_middle(catalogue):
    scorer = FixedScorer(np.zeros(7))
    assert target_ranks(scorer, queries([1], [[]]), catalogue).tolist() == [1]  # 4 tied items -> (4-1)//2


def test_nan_scores_rank_worst_never_first(catalogue):
    # a model whose training diverged scores NaN: before, every target ranked 0 (Recall 1.0)
    assert target_ranks(FixedScorer(np.full(7, np.nan)), queries([1, 2], [[], []]), catalogue).tolist() == [3, 3]
    scores = np.array([0, np.nan, 3.0, 2.0, 1.0, 0, 0])  # one NaN non-target: below every real score
    assert target_ranks(FixedScorer(scores), queries([4], [[]]), catalogue).tolist() == [2]


def test_evaluate_reports_per_domain_and_all(catalogue):
    train = pd.DataFrame({schema.USER_ID: ["u"] * 3, schema.ITEM_ID: ["a", "a", "x"], schema.DOMAIN: ["b", "b", "m"]})
    frame = evaluate([PopularityScorer(train, catalogue)], [queries([1, 6], [[], []])], catalogue, ks=(1,))
    assert frame.set_index("domain").loc["b", "recall@1"] == 1.0  # a is the most popular book
    assert frame.set_index("domain").loc["all", "queries"] == 2


def test_item_knn_scores_co_occurring_items_higher(catalogue):
    from crossrec.evaluation import ItemKNNScorer

    # a and b are bought together by two users; c only by a third
    train = pd.DataFrame({schema.USER_ID: ["u1", "u1", "u2", "u2", "u3"], schema.ITEM_ID: list("ababc"),
                          schema.DOMAIN: ["b"] * 5})
    scorer = ItemKNNScorer(train, catalogue)
    q = queries([2], [[]])
    q.examples.history[:] = [0, 1]  # history: a
    scores = scorer.score(q.examples, np.array([2, 3]))  # b, c
    assert scores[0, 0] == pytest.approx(1.0) and scores[0, 1] == 0.0


def test_bootstrap_intervals_surround_the_mean_and_narrow_with_more_queries():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 200, 100)
    large = rng.integers(0, 200, 10000)
    for ranks in (small, large):
        m, iv = ranking_metrics(ranks, ks=(10, 50)), bootstrap_intervals(ranks)
        for name in ("ndcg@10", "recall@10", "recall@50"):
            assert iv[f"{name}_lo"] <= m[name] <= iv[f"{name}_hi"]
            assert per_query(ranks, name).mean() == pytest.approx(m[name])
    width = lambda r: bootstrap_intervals(r)["recall@50_hi"] - bootstrap_intervals(r)["recall@50_lo"]  # noqa: E731
    assert width(large) < width(small) / 5  # ~1/sqrt(n): 10x narrower at 100x the queries
    same = bootstrap_intervals(np.zeros(50, int))  # every target first: no spread at all
    assert same["ndcg@10_lo"] == same["ndcg@10_hi"] == 1.0
    assert np.isnan(bootstrap_intervals(np.zeros(0, int))["ndcg@10_lo"])


def test_paired_difference_tells_a_consistent_win_from_noise():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 40, 400)
    better = np.maximum(base - 3, 0)  # every query ranked at least as high
    d = paired_difference(better, base)
    assert d["diff"] > 0 and d["diff_lo"] > 0 and d["a_ahead"] == 1.0
    shuffled = rng.permutation(base)  # same distribution, unrelated per query: no real difference
    n = paired_difference(shuffled, base)
    assert n["diff_lo"] < 0 < n["diff_hi"]
    with pytest.raises(ValueError, match="both must rank the same queries"):
        paired_difference(base[:3], base)


def test_pooled_metrics_average_each_query_over_seeds_and_equal_evaluate_for_one_seed(catalogue):
    from crossrec.evaluation import pooled_metrics

    scorer = FixedScorer(np.array([0, 4, 3, 2, 1, 2, 1], float))  # b: a > b > c > d; m: x > y
    qs = QuerySet("warm", queries([1, 3, 5], [[], [], []]).examples)
    ranks: list = []
    one = evaluate([scorer], [qs], catalogue, ks=(1, 2), ranks_out=ranks)
    pooled = pooled_metrics(pd.concat(ranks), ks=(1, 2))
    cols = ["queries", "recall@1", "recall@2", "ndcg@1", "ndcg@2", "mrr", "ndcg@10_lo", "ndcg@10_hi"]
    pd.testing.assert_frame_equal(pooled[cols], one[cols])
    # a second seed that ranks the first query's target second instead of first
    second = pd.concat(ranks).assign(seed=1)
    second.loc[second["query"] == 0, "rank"] = 1
    two = pooled_metrics(pd.concat([pd.concat(ranks).assign(seed=0), second]), ks=(1, 2))
    row = two[two["domain"] == "all"].iloc[0]
    assert row["seeds"] == 2 and row["queries"] == 3
    assert row["recall@1"] == pytest.approx(((1 + 0) / 2 + 0 + 1) / 3)  # query 0 averaged over the seeds
