"""Candidate sources (co-visitation, propagation, item-kNN), their merge with the towers' list, the ranker's
new features read from them, and the label view the ranker trains in."""

import numpy as np
import pandas as pd
import pytest

from crossrec import schema
from crossrec.features import Catalogue, Examples
from ranking.candidates import CandidateLists, merge_candidates
from ranking.model import RankingFeatures
from ranking.sources import NeighbourTable, co_visitation, item_knn, propagation, propose
from ranking.tables import FeatureTables, build_tables, label_tail, label_view


def tiny(rows):
    """interactions from (user, domain, item) in each user's order, and their catalogue"""
    frame = pd.DataFrame(rows, columns=[schema.USER_ID, schema.DOMAIN, schema.ITEM_ID])
    frame[schema.SEQ_POS] = frame.groupby(schema.USER_ID).cumcount()
    items = frame[[schema.DOMAIN, schema.ITEM_ID]].drop_duplicates().assign(**{schema.TEXT: "x"})
    extra = pd.DataFrame({schema.DOMAIN: ["b"], schema.ITEM_ID: ["fresh"], schema.TEXT: ["x"]})
    catalogue = Catalogue.build(pd.concat([items, extra]), ["a", "b"])
    return frame, catalogue


def row(catalogue, domain, item):
    return int(catalogue.rows([domain], [item])[0])


def test_co_visitation_matches_a_numpy_reference():
    frame, catalogue = tiny([("u1", "a", "a1"), ("u1", "b", "b1"), ("u1", "a", "a2"), ("u1", "b", "b2"),
                             ("u2", "a", "a1"), ("u2", "b", "b1"), ("u3", "b", "b2"), ("u3", "a", "a2")])
    table = co_visitation(frame, catalogue, window=2, per_domain=10)
    size = catalogue.size
    dense = np.zeros((size, size))
    for _, group in frame.groupby(schema.USER_ID):
        r = catalogue.rows(group[schema.DOMAIN], group[schema.ITEM_ID])
        for i in range(len(r)):
            for j in range(i + 1, min(len(r), i + 3)):
                dense[r[i], r[j]] += 1.0 / (j - i)
                dense[r[j], r[i]] += 1.0 / (j - i)
    n = np.bincount(catalogue.rows(frame[schema.DOMAIN], frame[schema.ITEM_ID]), minlength=size)
    dense = dense / np.sqrt(np.maximum(n, 1))[:, None] / np.sqrt(np.maximum(n, 1))[None, :]
    np.fill_diagonal(dense, 0.0)
    dense /= dense[dense > 0].mean()
    got = np.zeros((size, size))
    for r in range(size):
        for c, w in zip(table.neighbours[r], table.weights[r], strict=True):
            if c:
                got[r, c] += w
    np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-7)
    # each row lists its neighbours of each domain in their own slots, strongest first
    a2 = row(catalogue, "a", "a2")  # next to b1 once (u1), to b2 twice (u1, u3)
    assert list(table.neighbours[a2, 10:13]) == [row(catalogue, "b", "b2"), row(catalogue, "b", "b1"), 0]
    assert table.weights[a2, 10] > table.weights[a2, 11] > 0


def test_propagation_spreads_from_the_users_who_share_the_history():
    # a1's users: u1, u2, u4. Their b items: b1 (u1, u4), b2 (u2); b3 only via u3, who never had a1.
    frame, catalogue = tiny([("u1", "a", "a1"), ("u1", "b", "b1"), ("u2", "a", "a1"), ("u2", "b", "b2"),
                             ("u4", "a", "a1"), ("u4", "b", "b1"), ("u3", "a", "a2"), ("u3", "b", "b3")])
    table = propagation(frame, catalogue, per_domain=5)
    a1, b1, b2, b3 = (row(catalogue, "a", "a1"), row(catalogue, "b", "b1"), row(catalogue, "b", "b2"),
                      row(catalogue, "b", "b3"))
    history = np.array([[0, a1]], np.int32)
    scores = table.scores(history).toarray()[0]
    # P(a1 -> u) = 1/3 each, P(u -> b) = 1/2: b1 = 2/6, b2 = 1/6, b3 = 0
    assert scores[b3] == 0 and np.isclose(scores[b1], 2 * scores[b2])
    candidates, weights = propose(table, history, np.array(["b"], object), catalogue, 3)
    assert list(candidates[0]) == [b1, b2, 0] and weights[0, 2] == 0
    # a brand-new user known by a history the graph has never seen gets nothing, not an error
    assert (propose(table, np.zeros((1, 2), np.int32), np.array(["b"], object), catalogue, 3)[0] == 0).all()
    # the popularity penalty: beta = 1 divides by b1's degree (2): b1 and b2 tie
    flat = propagation(frame, catalogue, per_domain=5, beta=1.0).scores(history).toarray()[0]
    assert np.isclose(flat[b1], flat[b2])


def test_the_item_knn_source_orders_as_the_item_knn_baseline_does():
    from crossrec.evaluation import ItemKNNScorer

    frame, catalogue = tiny([("u1", "a", "a1"), ("u1", "b", "b1"), ("u1", "a", "a1"), ("u2", "a", "a1"),
                             ("u2", "b", "b2"), ("u2", "a", "a2"), ("u3", "a", "a2"), ("u3", "b", "b3"),
                             ("u4", "b", "b1"), ("u4", "a", "a2")])
    table = item_knn(frame, catalogue, per_domain=10)  # every neighbour kept
    history = np.array([[0, row(catalogue, "a", "a1"), row(catalogue, "a", "a2")]], np.int32)
    pool = np.flatnonzero(catalogue.item_domain_name == "b")
    ours = table.scores(history).toarray()[0, pool]
    queries = Examples(history, np.zeros(1, np.int32), np.zeros(1, np.int32), np.array(["q"], object),
                       np.ones(1, np.float32))
    theirs = ItemKNNScorer(frame, catalogue).score(queries, pool)[0]
    # the same cosines up to the table's scale (its mean kept weight is 1); the fresh item: 0
    scale = theirs[theirs > 0].mean() / ours[ours > 0].mean()
    np.testing.assert_allclose(ours * scale, theirs, rtol=1e-5)
    assert ours[pool == row(catalogue, "b", "fresh")] == 0 and (ours > 0).sum() == 3


def test_proposals_leave_out_seen_items_but_keep_the_target():
    frame, catalogue = tiny([("u1", "a", "a1"), ("u1", "b", "b1"), ("u2", "a", "a1"), ("u2", "b", "b2")])
    table = propagation(frame, catalogue)
    a1, b1, b2 = row(catalogue, "a", "a1"), row(catalogue, "b", "b1"), row(catalogue, "b", "b2")
    history = np.array([[a1, b1]], np.int32)
    found, _ = propose(table, history, np.array(["b"], object), catalogue, 3)
    assert b1 not in found[0] and b2 in found[0]
    found, _ = propose(table, history, np.array(["b"], object), catalogue, 3, keep=np.array([b1]))
    assert b1 in found[0]


def test_merge_drops_duplicates_and_keeps_the_towers_scores():
    examples = Examples(np.zeros((2, 2), np.int32), np.array([1, 2], np.int32), np.ones(2, np.int32),
                        np.array(["u", "v"], object), np.ones(2, np.float32))
    items = np.arange(12, dtype=np.float32).reshape(6, 2)
    query = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    lists = CandidateLists(examples, query, np.array([[1, 2], [3, 0]], np.int32),
                           np.array([[2.0, 4.0], [7.0, -np.inf]], np.float32))
    merged = merge_candidates(lists, {"a": np.array([[2, 5], [3, 3]]), "b": np.array([[5, 4], [0, 1]])}, items)
    assert merged.candidates.tolist() == [[1, 2, 0, 5, 0, 4], [3, 0, 0, 0, 0, 1]]
    assert merged.retrieval_scores[0, 3] == items[5, 0] and merged.retrieval_scores[1, 5] == items[1, 1]
    assert np.isneginf(merged.retrieval_scores[0, 2])
    assert set(merged.proposals) == {"towers", "a", "b"} and merged.proposals["b"].tolist() == [[5, 4], [0, 1]]


def random_tables(seed=0, size=9, dim=3, width=4):
    rng = np.random.default_rng(seed)
    sources = [NeighbourTable(name, rng.integers(0, size, (size, width)).astype(np.int32),
                              rng.random((size, width)).astype(np.float32), decay)
               for name, decay in (("co_visitation", 1.0), ("propagation", 0.0), ("item_knn", 0.0))]
    for s in sources:
        s.neighbours[0] = 0
    popularity = rng.integers(0, 3, size).astype(np.float32)
    popularity[0] = 0
    return FeatureTables(rng.normal(size=(size, dim)).astype(np.float32), (np.arange(size) % 2 + 1).astype(np.int32),
                         3, popularity, text_vectors=rng.normal(size=(size, dim)).astype(np.float32),
                         first_seen=rng.random(size).astype(np.float32), sources=sources)


def test_source_text_and_age_features_match_numpy():
    tables = random_tables()
    layer = RankingFeatures(tables, ["co_visitation", "propagation", "text_similarity", "item_age", "retrieval_rank"])
    history = np.array([[0, 3, 4, 5], [7, 8, 1, 2]], np.int32)
    candidates = np.array([[1, 2, 6], [3, 4, 0]], np.int32)
    query = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    out = layer({"query": query, "history": history, "candidates": candidates}).numpy()
    assert out.shape == (2, 3, layer.output_dim) and layer.output_dim == 3 + 3 + 2 + 2 + 1
    for s, table in enumerate(tables.sources[:2]):
        expected = np.take_along_axis(table.scores(history).toarray(), candidates, 1)
        np.testing.assert_allclose(out[..., 3 * s], np.log1p(expected), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out[..., 3 * s + 1], expected > 0)
    # weights saved in weight order (an older crossrec) are put in item order on load: same features
    for name in layer.source_names:
        scrambled = layer.tables[f"{name}_neighbours"].numpy()[:, ::-1].copy()
        layer.tables[f"{name}_neighbours"].assign(scrambled)
        layer.tables[f"{name}_weights"].assign(layer.tables[f"{name}_weights"].numpy()[:, ::-1].copy())
    layer.sort_neighbours()
    again = layer({"query": query, "history": history, "candidates": candidates}).numpy()
    np.testing.assert_allclose(again, out, rtol=1e-6)
    # co-visitation weighs history positions by recency: the most recent counts 1, the one before 1/2
    assert np.allclose(tables.sources[0].position_weights(4), [1 / 4, 1 / 3, 1 / 2, 1])
    # text similarity to the most recent history item of the candidate's domain (domain = row % 2 + 1)
    unit = tables.text_vectors / np.linalg.norm(tables.text_vectors, axis=1, keepdims=True)
    recent = {(0, 1): 4, (0, 2): 5, (1, 1): 2, (1, 2): 1}
    for b in range(2):
        for j, c in enumerate(candidates[b]):
            if c:
                np.testing.assert_allclose(out[b, j, 6:8], [unit[c] @ unit[recent[b, c % 2 + 1]], 1.0], rtol=1e-5)
                np.testing.assert_allclose(out[b, j, 8:10], [tables.first_seen[c], float(tables.popularity[c] == 0)])
    # the place in the list by the towers' score, / L
    scores = query[:, None, :] @ tables.item_embeddings[candidates].transpose(0, 2, 1)
    first = np.argmax(np.where(candidates > 0, scores[:, 0, :], -np.inf), axis=1)
    assert (out[np.arange(2), first, 10] == 0).all()


def test_the_label_view_holds_out_the_tail_and_makes_tail_only_items_new():
    frame, catalogue = tiny([("u1", "a", "a1"), ("u1", "b", "b1"), ("u1", "b", "b2"),
                             ("u2", "a", "a1"), ("u2", "b", "b1"), ("u2", "a", "a2"), ("u3", "b", "b3")])
    tail = label_tail(frame, 1)
    # each user's last interaction, for users with a history before it (u3 has none)
    assert frame[tail][schema.ITEM_ID].tolist() == ["b2", "a2"]
    rng = np.random.default_rng(0)
    embeddings, text = (rng.normal(size=(catalogue.size, 2)).astype(np.float32) for _ in range(2))
    serving = build_tables(frame, catalogue, embeddings, text, sources=["co_visitation", "propagation"])
    view = label_view(serving, frame[~tail], catalogue)
    b2, b1 = row(catalogue, "b", "b2"), row(catalogue, "b", "b1")
    assert serving.popularity[b2] == 1 and view.popularity[b2] == 0
    np.testing.assert_array_equal(view.item_embeddings[b2], text[b2])  # new in this view: its text alone
    np.testing.assert_array_equal(view.item_embeddings[b1], embeddings[b1])
    assert b2 in serving.sources[1].neighbours and b2 not in view.sources[1].neighbours
    assert view.sources[0].neighbours.shape == serving.sources[0].neighbours.shape
    fresh = row(catalogue, "b", "fresh")
    assert serving.popularity[fresh] == 0 and np.array_equal(serving.item_embeddings[fresh], embeddings[fresh])


def test_the_served_order_keeps_new_items_at_their_towers_place():
    from ranking.policy import served_scores

    candidates = np.array([[5, 6, 7, 8, 0]], np.int32)
    retrieval = np.array([[0.9, 0.8, 0.7, 0.6, -np.inf]], np.float32)  # towers' order: 5, 6, 7, 8
    ranker = np.array([[0.1, 0.2, 9.0, 0.3, 5.0]], np.float32)  # ranker's order: 7, 8, 6, 5
    new = np.array([[False, True, False, False, False]])  # 6 is new: it keeps place 1
    order = np.argsort(-served_scores(ranker, retrieval, candidates, new).numpy()[0], kind="stable")
    assert candidates[0, order].tolist() == [7, 6, 8, 5, 0]
    # without new items the served order is the ranker's
    order = np.argsort(-served_scores(ranker, retrieval, candidates, np.zeros_like(new)).numpy()[0], kind="stable")
    assert candidates[0, order].tolist() == [7, 8, 6, 5, 0]


def test_source_recall_counts_each_sources_own_list_and_the_merged_one():
    from ranking.evaluate import source_recall

    frame, catalogue = tiny([("u1", "a", "a1"), ("u1", "b", "b1"), ("u2", "b", "b2"), ("u2", "b", "b3")])
    b1, b2, b3 = (row(catalogue, "b", i) for i in ("b1", "b2", "b3"))
    examples = Examples(np.zeros((2, 2), np.int32), np.array([b1, b2], np.int32), np.ones(2, np.int32),
                        np.array(["u1", "u2"], object), np.ones(2, np.float32))
    towers = CandidateLists(examples, np.eye(2, dtype=np.float32), np.array([[b1, 0], [b3, 0]], np.int32),
                            np.array([[1.0, -np.inf], [1.0, -np.inf]], np.float32))
    merged = merge_candidates(towers, {"propagation": np.array([[b3, 0], [b2, b1]])},
                              np.ones((catalogue.size, 2), np.float32))
    table = source_recall([("warm", merged)], catalogue).set_index(["domain", "source"])
    assert table.loc[("all", "towers"), "recall"] == 0.5 and table.loc[("all", "propagation"), "recall"] == 0.5
    assert table.loc[("all", "merged"), "recall"] == 1.0 and table.loc[("all", "merged"), "list_length"] == 2.5


def test_every_registered_feature_has_the_registry_width():
    """One definition per feature: each computes exactly the columns the registry gives it, and
    the registry's tables are ones the layer holds."""
    from crossrec.ranking_features import FEATURES

    tables = random_tables()
    history = np.array([[0, 3, 4, 5], [7, 8, 1, 2]], np.int32)
    inputs = {"query": np.ones((2, 3), np.float32), "history": history,
              "candidates": np.array([[1, 2, 6], [3, 4, 0]], np.int32)}
    for name, feature in FEATURES.items():
        layer = RankingFeatures(tables, [name])
        assert layer(inputs).shape[-1] == feature.columns(3, 3) == layer.output_dim, name
        assert set(feature.tables) <= set(layer.tables), name


def test_a_source_feature_without_its_source_names_the_fix():
    from crossrec.config import RankingConfig
    from crossrec.errors import ConfigError

    with pytest.raises(ConfigError, match="ranking.features: co_visitation needs that source in ranking.sources"):
        RankingConfig(sources=["propagation"], features=["retrieval_score", "co_visitation"])
    assert "co_visitation" not in RankingConfig(sources=["propagation"]).features


def test_cold_start_copies_drop_the_target_domain_from_the_history():
    from ranking.mining import cold_start_copies

    frame, catalogue = tiny([("u1", "a", "a1"), ("u1", "b", "b1"), ("u1", "a", "a2"), ("u1", "a", "a3")])
    a1, a2, a3 = (row(catalogue, "a", i) for i in ("a1", "a2", "a3"))
    b1 = row(catalogue, "b", "b1")
    examples = Examples(np.array([[a1, b1, a2], [0, a1, a2], [0, b1, a1]], np.int32), np.array([a3, a3, a2], np.int32),
                        np.ones(3, np.int32), np.array(["u1", "u2", "u3"], object), np.ones(3, np.float32))
    out = cold_start_copies(examples, catalogue, 1.0, seed=0)
    # the first and third get a copy (another domain remains); the second has only domain a
    np.testing.assert_array_equal(out.history[:3], examples.history)
    np.testing.assert_array_equal(out.history[3:], [[0, 0, b1], [0, 0, b1]])
    assert list(out.target[3:]) == [a3, a2] and list(out.user_id[3:]) == ["u1", "u3"]
    assert len(cold_start_copies(examples, catalogue, 0.0, seed=0)) == 3


def test_the_graphs_sparse_source_scores_equal_the_numpy_table():
    """``ranking.source_scores`` (no catalogue-wide tensor) gives every candidate, and every item
    the history reaches, the score ``NeighbourTable.scores`` gives it, and 0 elsewhere."""
    import tensorflow as tf

    from ranking.source_scores import SourceScores, sorted_member, sorted_rows

    rng = np.random.default_rng(0)
    size, width = 400, 12
    neighbours = np.argsort(rng.random((size, size)), axis=1)[:, :width].astype(np.int32)  # distinct per row
    weights = np.where((neighbours > 0) & (rng.random((size, width)) > 0.2), rng.random((size, width)), 0.0)
    table = NeighbourTable("t", *sorted_rows(neighbours, weights.astype(np.float32)), position_decay=1.0)
    history = rng.integers(0, size, (6, 9)).astype(np.int32)
    history[:, :3] = 0  # right-aligned padding
    history[5] = 0  # a history with no item
    dense = table.scores(history).toarray()
    candidates = np.concatenate([rng.integers(0, size, (6, 30)), np.zeros((6, 2), np.int64)], axis=1)
    for budget in (10**9, 0):  # summed over the catalogue, and looked up row by row
        scores = SourceScores(tf.constant(table.neighbours), tf.constant(table.weights), 1.0, tf.constant(history),
                              dense_budget=budget)
        np.testing.assert_allclose(scores.of(tf.constant(candidates, tf.int32)).numpy(),
                                   np.take_along_axis(dense, candidates, 1), rtol=1e-6)
    reached = scores.reached()
    # the served list scores its candidates from what it proposed from: the same numbers, exactly
    for budget in (10**9, 0):
        alone = SourceScores(tf.constant(table.neighbours), tf.constant(table.weights), 1.0, tf.constant(history),
                             dense_budget=budget).of(tf.constant(candidates, tf.int32)).numpy()
        np.testing.assert_array_equal(reached.of(tf.constant(candidates, tf.int32)).numpy(), alone)
    items, values = (t.numpy() for t in reached.unique())
    for row in range(len(history)):
        reached = items[row] > 0
        assert sorted(items[row][reached]) == list(np.flatnonzero(dense[row]))  # each reached item once
        np.testing.assert_allclose(values[row][reached], dense[row, items[row][reached]], rtol=1e-6)
        assert not values[row][~reached].any()
    member = sorted_member(tf.constant(candidates, tf.int32), tf.constant(history)).numpy()
    assert (member == np.array([[c > 0 and c in set(h) for c in row] for row, h in zip(candidates, history, strict=True)])).all()
