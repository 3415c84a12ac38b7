"""SASRec, the sequential baseline: its training pieces, its causality, and that it learns order."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from crossrec import schema
from crossrec.data.dataset import Dataset
from crossrec.evaluation import PopularityScorer, evaluate
from crossrec.experiment import prepare_data
from crossrec.features import Catalogue
from towers.sasrec import SASRec, SASRecSettings, train_sasrec, training_sequences


def _frame(sequences: dict[str, list[str]]) -> pd.DataFrame:
    return pd.DataFrame([(user, item, "books", pos) for user, items in sequences.items() for pos, item in enumerate(items)],
                        columns=[schema.USER_ID, schema.ITEM_ID, schema.DOMAIN, schema.SEQ_POS])


def test_each_users_sequence_is_cut_from_its_end_into_right_aligned_pieces():
    items = pd.DataFrame({schema.ITEM_ID: list("abcdefg"), schema.DOMAIN: "books", schema.TEXT: "t"})
    catalogue = Catalogue.build(items, ["books"])
    row = dict(zip("abcdefg", catalogue.rows(["books"] * 7, list("abcdefg")), strict=True))
    inputs, targets = training_sequences(_frame({"u1": list("abcde"), "u2": list("fg"), "u3": ["a"]}), catalogue, 2)
    expected = [("de", "cd"), ("bc", "ab")]  # u1: pieces of 3 from the end: c d e, a b c
    got = {(tuple(i), tuple(t)) for i, t in zip(inputs.tolist(), targets.tolist(), strict=True)}
    want = {((row[x[0]], row[x[1]]), (row[y[0]], row[y[1]])) for y, x in expected}
    want.add(((0, row["f"]), (0, row["g"])))  # u2: one piece, padded on the left; u3 (one item) has none
    assert got == want and len(inputs) == 3


def test_a_position_never_sees_a_later_item():
    model = SASRec(20, np.ones(20, np.int32), 6, SASRecSettings(dim=8, blocks=2, heads=2), dropout=0.0)
    rows = np.array([[0, 0, 3, 4, 5, 6]], np.int32)
    changed = rows.copy()
    changed[0, -1] = 9
    a, b = np.asarray(model(rows)), np.asarray(model(changed))
    # the real positions before it (padding positions attend to nothing real and are never read)
    np.testing.assert_allclose(a[:, 2:-1], b[:, 2:-1], atol=1e-6)
    assert not np.allclose(a[:, -1], b[:, -1])


def test_it_learns_what_comes_next_where_popularity_cannot(tiny_config, capsys):
    # every user walks the same cycle of 40 items from a random start: the next item is the one
    # after the last, and every item is about as popular as any other
    rng = np.random.default_rng(0)
    sequences = {f"u{u}": [f"i{(start + k) % 40}" for k in range(10)] for u, start in enumerate(rng.integers(0, 40, 80))}
    items = pd.DataFrame({schema.ITEM_ID: [f"i{k}" for k in range(40)], schema.DOMAIN: "books", schema.TEXT: "t"})
    config = replace(tiny_config, split=replace(tiny_config.split, holdout_fraction=0.1))
    data = prepare_data(config, Dataset(_frame(sequences), items))
    scorer = train_sasrec(config, data, settings=SASRecSettings(dim=16, heads=2, dropouts=(0.0,), learning_rate=0.01,
                                                                batch_size=32, max_epochs=15, patience=15,
                                                                min_steps=1), progress=True)
    shown = capsys.readouterr().out  # one progress line per model, with the metric that chooses its epoch
    assert "training sasrec (dropout 0.0)" in shown and "val_ndcg_at_10" in shown
    warm = [q for q in data.test if q.slice == "warm"]
    metrics = evaluate([scorer, PopularityScorer(data.train, data.catalogue)], warm, data.catalogue, ks=(10,))
    ndcg = metrics[metrics["domain"] == "all"].set_index("model")["ndcg@10"]
    # a test query's history is its training part: the validation item (the one right after it)
    # is unknown to it and comes first, the target second (NDCG 1 / log2(3) = 0.63)
    assert ndcg["sasrec"] > 0.5 > 0.2 > ndcg["popularity"]


def test_the_loss_is_the_softmax_over_the_next_items_domain_catalogue():
    item_domain = np.array([0, 1, 1, 1, 2, 2, 2, 2], np.int32)  # rows 1-3: domain 1, rows 4-7: domain 2
    model = SASRec(8, item_domain, 4, SASRecSettings(dim=8, heads=2), dropout=0.0)
    inputs = np.array([[0, 1, 4, 2], [5, 6, 3, 7]], np.int32)
    targets = np.array([[0, 4, 2, 6], [6, 3, 7, 1]], np.int32)
    states = model(inputs)
    loss = float(model.compute_loss(inputs, targets, states))
    table, states = np.asarray(model.item_embedding.embeddings), np.asarray(states)
    losses = []
    for b, p in zip(*np.nonzero(targets), strict=True):
        rows = np.flatnonzero(item_domain == item_domain[targets[b, p]])
        logits = table[rows] @ states[b, p]
        losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[rows == targets[b, p]][0])
    assert loss == pytest.approx(np.mean(losses), rel=1e-5)
