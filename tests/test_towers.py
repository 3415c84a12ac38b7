"""The named parts of the retrieval model, each alone, then the model as a whole."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from crossrec import schema
from crossrec.features import UNSEEN_DOMAIN, Catalogue, query_examples
from crossrec.windows import training_examples
from towers.model import ItemTower, RetrievalModel, UserTower, latest_slot
from towers.spec import LossSpec, TowerSpec, TowerTables


def test_item_tower_output_is_normalised_and_domain_zero_uses_the_agnostic_path_only():
    tower = ItemTower(num_items=5, num_domains=3, text_dim=8, embedding_dim=4, use_item_ids=False, dropout=0.0)
    text = np.random.default_rng(0).normal(size=(2, 8)).astype("float32")
    rows = np.array([1, 2])
    out = np.asarray(tower(text, np.array([1, 2]), rows, np.array([True, True])))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # give the domain adapters weight: domain 0 must ignore them, domains 1/2 must not
    kernel = tower.domain_adapters.kernel
    kernel.assign(np.random.default_rng(1).normal(size=kernel.shape).astype("float32"))
    agnostic = np.asarray(tower(text, np.array([0, 0]), rows, np.array([True, True])))
    as_domain = np.asarray(tower(text, np.array([1, 1]), rows, np.array([True, True])))
    shared = np.asarray(tower.shared_out(tower.shared_hidden(text)))  # no domain adapter at all
    np.testing.assert_allclose(agnostic, shared / np.linalg.norm(shared, axis=1, keepdims=True), atol=1e-5)
    assert np.abs(agnostic - as_domain).max() > 1e-3


def test_item_tower_ids_apply_only_to_known_items():
    tower = ItemTower(num_items=5, num_domains=2, text_dim=8, embedding_dim=4, dropout=0.0)
    text = np.ones((2, 8), "float32")
    known = np.asarray(tower(text, np.array([1, 1]), np.array([1, 2]), np.array([True, True])))
    unknown = np.asarray(tower(text, np.array([1, 1]), np.array([1, 2]), np.array([False, False])))
    assert np.abs(known[0] - known[1]).max() > 1e-4  # ids make equal texts differ
    np.testing.assert_allclose(unknown[0], unknown[1], atol=1e-6)  # text only: equal texts, equal vectors


def test_the_mixture_of_experts_adapter_is_a_gated_sum_of_whitened_projections():
    tower = ItemTower(num_items=5, num_domains=2, text_dim=6, embedding_dim=4, use_item_ids=False, dropout=0.0,
                      text_experts=3)
    text = np.random.default_rng(0).normal(size=(2, 6)).astype("float32")
    out = np.asarray(tower(text, np.array([0, 0]), np.array([1, 2]), np.array([False, False])))  # agnostic path
    bias = np.random.default_rng(1).normal(size=(3, 6)).astype("float32")
    tower.expert_bias.assign(bias)
    kernel, gate = np.asarray(tower.expert_kernel), np.asarray(tower.expert_gate(text))
    weights = np.exp(gate) / np.exp(gate).sum(axis=1, keepdims=True)
    experts = np.stack([(text - bias[k]) @ kernel[k] for k in range(3)], axis=1)  # (b, k, e)
    expected = np.einsum("bk,bke->be", weights, experts)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(tower(text, np.array([0, 0]), np.array([1, 2]),
                                                np.array([False, False]))), expected, atol=1e-5)
    assert not np.allclose(out, expected)  # the biases (whitening centres) moved it


def test_id_only_tower_needs_no_text():
    tower = ItemTower(num_items=5, num_domains=2, text_dim=0, embedding_dim=4, use_text=False)
    out = np.asarray(tower(None, np.array([1]), np.array([3]), np.array([True])))
    assert out.shape == (1, 4)
    with pytest.raises(ValueError, match="needs text, item ids, or both"):
        ItemTower(5, 2, 0, use_text=False, use_item_ids=False)


def test_user_tower_ignores_padding_and_handles_empty_histories():
    tower = UserTower(num_domains=3, history_length=4, embedding_dim=4, dropout=0.0)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2, 4, 4)).astype("float32")
    mask = np.array([[False, False, True, True], [False] * 4])
    domains = np.array([[0, 0, 1, 2], [0] * 4])
    out = np.asarray(tower(emb, mask, domains, np.array([1, 2])))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    emb2 = emb.copy()
    emb2[0, :2] = 99.0  # padded slots change: the output must not
    np.testing.assert_allclose(np.asarray(tower(emb2, mask, domains, np.array([1, 2]))), out, atol=1e-5)
    # the target domain changes the query
    other = np.asarray(tower(emb, mask, domains, np.array([2, 2])))
    assert np.abs(other[0] - out[0]).max() > 1e-4


def test_user_tower_recency_matters():
    tower = UserTower(num_domains=2, history_length=3, embedding_dim=4, dropout=0.0)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 4)).astype("float32")
    mask = np.ones((1, 3), bool)
    dom = np.ones((1, 3), int)
    first = np.asarray(tower(np.stack([[a, a, b]]), mask, dom, np.array([1])))
    second = np.asarray(tower(np.stack([[b, a, a]]), mask, dom, np.array([1])))
    assert np.abs(first - second).max() > 1e-4


def _user_query_by_definition(tower, emb, mask, domains, target):
    """The user tower written out slot by slot (numpy), as its docstring defines it."""
    table = {name: np.asarray(getattr(tower, name).embeddings) for name in ("history_domain", "recency", "target_domain")}
    x = (emb + table["history_domain"][domains] + table["recency"][None]) * mask[..., None]
    wanted = table["target_domain"][target]
    keys, probe = x @ np.asarray(tower.key.kernel), wanted @ np.asarray(tower.query.kernel)
    scores = np.where(mask, np.einsum("bhe,be->bh", keys, probe) / np.sqrt(emb.shape[-1]), -1e9)
    attention = np.exp(scores - scores.max(axis=1, keepdims=True)) * mask
    attention /= np.maximum(attention.sum(axis=1, keepdims=True), 1e-30)
    same = mask & (domains == target[:, None])

    def mean(where):
        return (emb * where[..., None]).sum(axis=1) / np.maximum(where.sum(axis=1), 1)[:, None]

    same_last = np.array([emb[i, np.flatnonzero(row)[-1]] if row.any() else np.zeros(emb.shape[-1])
                          for i, row in enumerate(same)])
    parts = np.concatenate([np.einsum("bh,bhe->be", attention, x), x[:, -1], wanted, mean(same), same_last], axis=1)
    out = np.asarray(tower.out(tower.hidden(parts.astype("float32")))) + mean(mask) + mean(same)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_user_tower_computes_its_definition():
    tower = UserTower(num_domains=3, history_length=6, embedding_dim=8, dropout=0.0)
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(5, 6, 8)).astype("float32")
    mask = np.array([[0, 0, 1, 1, 1, 1], [0] * 6, [1] * 6, [0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], bool)
    domains = rng.integers(1, 3, size=(5, 6)) * mask
    target = np.array([1, 2, 2, 1, 2])
    out = np.asarray(tower(emb, mask, domains, target))
    np.testing.assert_allclose(out, _user_query_by_definition(tower, emb, mask, domains, target), atol=1e-5)


@pytest.fixture
def small():
    items = pd.DataFrame({schema.ITEM_ID: ["a", "b", "c", "x"], schema.DOMAIN: ["books", "books", "movies", "toys"],
                          schema.TEXT: ["A", "B", "C", "X"]})
    inter = pd.DataFrame({schema.USER_ID: ["u", "u", "u", "v", "v"], schema.ITEM_ID: ["a", "c", "b", "b", "a"],
                          schema.DOMAIN: ["books", "movies", "books", "books", "books"],
                          schema.TIMESTAMP: [1, 2, 3, 1, 2]})
    return items, inter


def test_catalogue_rows_and_unseen_domains(small):
    items, inter = small
    cat = Catalogue.build(items, ["books", "movies"])
    assert cat.domains == [UNSEEN_DOMAIN, "books", "movies"]
    assert cat.rows(["books", "movies", "toys", "books"], ["a", "c", "x", "zz"]).tolist() == [1, 3, 4, 0]
    assert cat.item_domain.tolist() == [0, 1, 1, 2, 0]  # toys was never trained: the agnostic path
    freq = cat.frequencies(inter)
    assert freq[0] == 0 and abs(freq.sum() - 1) < 1e-6 and freq[1] > freq[4]


def test_training_examples_use_only_earlier_items_right_aligned(small):
    items, inter = small
    cat = Catalogue.build(items, ["books", "movies"])
    ex = training_examples(inter, cat, history_length=3)
    # u: a(1) c(3) b(2) -> targets c, b ; v: b a -> target a
    assert ex.target.tolist() == [3, 2, 1]
    assert ex.history.tolist() == [[0, 0, 1], [0, 1, 3], [0, 0, 2]]
    assert ex.target_domain.tolist() == [2, 1, 1]


def test_windows_build_each_batch_history_as_the_stored_windows_would():
    """Compact windows (flat rows + target positions) give, in the tf.data batches, exactly the
    right-aligned histories of the earlier one-array-per-window form (a reference loop here)."""
    from towers.inputs import make_dataset

    rng = np.random.default_rng(3)
    items = pd.DataFrame({schema.ITEM_ID: [f"i{k}" for k in range(30)], schema.DOMAIN: ["x", "y"] * 15,
                          schema.TEXT: ["t"] * 30})
    catalogue = Catalogue.build(items, ["x", "y"])
    users = np.repeat([f"u{k}" for k in range(12)], rng.integers(1, 9, 12))
    picks = rng.integers(0, 30, len(users))
    inter = pd.DataFrame({schema.USER_ID: users, schema.ITEM_ID: [f"i{k}" for k in picks],
                          schema.DOMAIN: [["x", "y"][k % 2] for k in picks],
                          schema.TIMESTAMP: np.arange(len(users))})
    h = 4
    windows = training_examples(inter, catalogue, h)
    expected, targets = [], []
    for _, group in inter.groupby(schema.USER_ID, sort=True):
        rows = catalogue.rows(group[schema.DOMAIN], group[schema.ITEM_ID])
        for j in range(1, len(rows)):
            kept = rows[max(0, j - h):j]
            expected.append(np.r_[np.zeros(h - len(kept), np.int32), kept])
            targets.append(rows[j])
    np.testing.assert_array_equal(windows.history, expected)
    np.testing.assert_array_equal(windows.target, targets)
    want = sorted((*h_, t) for h_, t in zip(np.array(expected).tolist(), targets, strict=True))

    def read(batches):
        return sorted((*h_, t) for b in batches
                      for h_, t in zip(b["history"].numpy().tolist(), b["target"].numpy().tolist(), strict=True))

    assert read(make_dataset(windows, len(windows) + 1, shuffle=True, seed=1)) == want  # one batch: all of them
    batches = list(make_dataset(windows, 5, shuffle=True, seed=1))
    assert set(read(batches)) <= set(want) and len(read(batches)) == 5 * (len(targets) // 5)  # whole batches
    sub = windows.subset(np.array([0, len(windows) - 1]))
    np.testing.assert_array_equal(sub.history, np.array(expected)[[0, -1]])


def test_query_examples_see_only_the_past(small):
    items, inter = small
    cat = Catalogue.build(items, ["books", "movies"])
    targets = pd.DataFrame({schema.USER_ID: ["u", "new"], schema.ITEM_ID: ["b", "a"],
                            schema.DOMAIN: ["books", "books"], schema.TIMESTAMP: [2, 5]})
    q = query_examples(inter, targets, cat, history_length=3)
    assert q.history.tolist() == [[0, 0, 1], [0, 0, 0]]  # u before t=2: only a; a new user: nothing


MAIN_LOSS = LossSpec(temperature=0.1, text_only_loss_weight=0.0)  # the loss formulas below are of the main loss alone


def _model(text=True, loss=MAIN_LOSS, **tower):
    rng = np.random.default_rng(0)
    size = 6
    table = rng.normal(size=(size, 5)).astype("float32")
    tables = TowerTables(table if text else None, np.array([0, 1, 1, 2, 2, 2], np.int32), np.ones(size, bool),
                         np.array([0, 0, 0, 1, 1, 1], np.int32), np.stack([table[1:3].mean(0), table[3:].mean(0)]),
                         np.full(size, 1 / size, np.float32), 3)
    return RetrievalModel(tables, TowerSpec(embedding_dim=8, history_length=4, use_text=text, **tower), loss)


def _loss(**settings):
    return replace(MAIN_LOSS, **settings)


@pytest.mark.parametrize("text", [True, False])
def test_model_queries_and_items_share_the_space(text):
    model = _model(text, user_id_buckets=8)
    feats = {"history": np.array([[0, 0, 1, 3], [0, 0, 0, 0]], np.int32), "target_domain": np.array([1, 2], np.int32),
             "user_id": np.array(["a", "b"])}
    q = np.asarray(model(feats))
    items = model.all_item_embeddings()
    assert q.shape == (2, 8) and items.shape == (6, 8)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)


def test_loss_is_the_in_batch_softmax_with_temperature():
    model = _model(loss=_loss(same_domain_negatives=False, logq_correction=False))
    model.task._remove_accidental_hits = False
    feats = {"history": np.array([[0, 0, 0, 1], [0, 0, 1, 2]], np.int32), "target": np.array([3, 4], np.int32),
             "target_domain": np.array([2, 2], np.int32), "weight": np.ones(2, np.float32)}
    q = np.asarray(model(feats))
    c = np.asarray(model.item_embeddings(feats["target"]))
    logits = q @ c.T / 0.1
    expected = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)])
    loss = float(model.compute_loss(feats, None, model(feats), training=False))
    assert loss == pytest.approx(expected, rel=1e-4)


def test_per_example_weights_scale_the_loss():
    model = _model()
    feats = {"history": np.array([[0, 0, 0, 1], [0, 0, 1, 2]], np.int32), "target": np.array([3, 4], np.int32),
             "target_domain": np.array([2, 2], np.int32), "weight": np.ones(2, np.float32)}
    base = float(model.compute_loss(feats, None, model(feats), training=False))
    doubled = float(model.compute_loss({**feats, "weight": np.full(2, 2.0, np.float32)}, None, model(feats),
                                       training=False))
    assert doubled == pytest.approx(2 * base, rel=1e-5)


# targets 1 (domain 1), 3 and 4 (domain 2)
THREE_QUERIES = {"history": np.array([[0, 0, 0, 1], [0, 0, 1, 2], [0, 0, 0, 2]], np.int32),
                 "target": np.array([1, 3, 4], np.int32), "target_domain": np.array([1, 2, 2], np.int32),
                 "weight": np.ones(3, np.float32)}


def test_same_domain_negatives_leave_other_domains_out_of_the_softmax():
    model = _model(loss=_loss(logq_correction=False))
    model.task._remove_accidental_hits = False
    feats = THREE_QUERIES
    q = np.asarray(model(feats))
    c = np.asarray(model.item_embeddings(feats["target"]))
    logits = q @ c.T / 0.1
    same = [[0], [1, 2], [1, 2]]
    expected = np.mean([np.log(np.exp(logits[i, same[i]]).sum()) - logits[i, i] for i in range(3)])
    loss = float(model.compute_loss(feats, None, model(feats), training=False))
    assert loss == pytest.approx(expected, rel=1e-4)


def test_hard_negatives_keep_only_the_hardest_in_batch_negative():
    model = _model(loss=_loss(same_domain_negatives=False, logq_correction=False))
    model.task._remove_accidental_hits = False
    model.task._num_hard_negatives = 1
    feats = THREE_QUERIES
    q = np.asarray(model(feats))
    c = np.asarray(model.item_embeddings(feats["target"]))
    logits = q @ c.T / 0.1
    expected = []
    for i, row in enumerate(logits):
        hardest = max(v for j, v in enumerate(row) if j != i)  # positive + the top-scoring negative
        expected.append(np.log(np.exp(row[i]) + np.exp(hardest)) - row[i])
    loss = float(model.compute_loss(feats, None, model(feats), training=False))
    assert loss == pytest.approx(np.mean(expected), rel=1e-4)


def test_latest_slot_marks_the_most_recent_masked_slot():
    mask = np.array([[True, False, True, False], [False] * 4])
    np.testing.assert_array_equal(np.asarray(latest_slot(mask)), [[0, 0, 1, 0], [0, 0, 0, 0]])  # slot 2; none -> 0


def _softmax_loss(logits, mask, correction):
    scores = np.where(mask, logits - correction[None, :], -np.inf)
    return np.mean([np.log(np.exp(row[np.isfinite(row)]).sum()) - row[i] for i, row in enumerate(scores)])


def test_text_only_loss_adds_the_loss_of_candidates_embedded_from_text_alone():
    model = _model(loss=_loss(logq_correction=False, text_only_loss_weight=0.5), dropout=0.0, domain_dropout=0.0,
                   item_id_dropout=0.0)
    model.task._remove_accidental_hits = False
    feats = THREE_QUERIES
    loss = float(model.compute_loss(feats, None, model(feats, training=True), training=True))
    q = np.asarray(model(feats))
    domain = np.array([0, 1, 1, 2, 2, 2])
    mask = domain[feats["target"]][:, None] == domain[feats["target"]][None, :]
    zero = np.zeros(3)
    hybrid = q @ np.asarray(model.item_embeddings(feats["target"])).T / 0.1
    text = q @ np.asarray(model.item_embeddings(feats["target"], use_ids=False)).T / 0.1
    assert not np.allclose(hybrid, text)  # the ID part matters
    assert loss == pytest.approx(_softmax_loss(hybrid, mask, zero) + 0.5 * _softmax_loss(text, mask, zero), rel=1e-4)


@pytest.mark.parametrize("text_only", [0.0, 0.5])
def test_one_pass_training_step_equals_separate_passes(text_only):
    """A training step embeds history and targets in one pass of the item tower (every distinct
    item once, the text path shared by the text-only loss): the same loss and gradients as
    embedding them separately, when nothing random is drawn."""
    import tensorflow as tf

    model = _model(loss=_loss(logq_correction=True, text_only_loss_weight=text_only), dropout=0.0,
                   domain_dropout=0.0, item_id_dropout=0.0, text_experts=2)
    feats = {k: tf.constant(v) for k, v in THREE_QUERIES.items()}

    def loss_and_gradients(given):  # without the target the call embeds the queries alone
        with tf.GradientTape() as tape:
            outputs = model(given, training=True)
            loss = model.compute_loss(feats, None, outputs, training=True)
        return outputs, float(loss), tape.gradient(loss, model.trainable_variables)

    outputs, one_loss, one_grads = loss_and_gradients(feats)
    assert isinstance(outputs, dict) and ("text_only" in outputs) == (text_only > 0)
    outputs, two_loss, two_grads = loss_and_gradients({k: v for k, v in feats.items() if k != "target"})
    assert not isinstance(outputs, dict)
    assert one_loss == pytest.approx(two_loss, rel=1e-5)
    for one, two in zip(one_grads, two_grads, strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(one), tf.convert_to_tensor(two), rtol=1e-4, atol=1e-6)


def test_the_experts_matmul_equals_the_per_expert_sum():
    model = _model(dropout=0.0, domain_dropout=0.0, text_experts=3)
    tower = model.item_tower
    text = np.random.default_rng(1).normal(size=(4, 5)).astype("float32")
    kernel, bias = np.asarray(tower.expert_kernel), np.asarray(tower.expert_bias)
    gate = np.asarray(tower.expert_gate(text))
    mix = np.exp(gate) / np.exp(gate).sum(-1, keepdims=True)
    shared = sum(mix[:, k:k + 1] * ((text - bias[k]) @ kernel[k]) for k in range(3))
    domain = np.array([0, 0, 0, 0], np.int32)  # domain 0: the shared path alone
    part = tower._text_part(text, domain, training=False)
    np.testing.assert_allclose(np.asarray(part), shared, rtol=1e-4, atol=1e-5)
