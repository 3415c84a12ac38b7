"""The feed's selection across domains (ranking.feed): one scale for every domain, and the greedy
choice for relevance, diversity (MMR) and calibration (Steck)."""

import numpy as np
import pytest

import crossrec  # noqa: F401  (environment first)
from crossrec import schema
from ranking.feed import calibrated_scores, domain_shares, select, select_reference


def requests(seed=0, b=8, c=40, d=3, e=8):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(b, c, e))
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    return {"scores": rng.random((b, c)).astype(np.float32), "domains": rng.integers(0, d, (b, c)).astype(np.int32),
            "vectors": vectors.astype(np.float32), "valid": rng.random((b, c)) > 0.1,
            "target": rng.dirichlet(np.ones(d), b).astype(np.float32)}


def picks(r, n, diversity, calibration, max_n=20):
    b = len(r["scores"])
    out = select(r["scores"], r["domains"], r["vectors"], r["valid"], r["target"], np.full(b, n, np.int32),
                 np.full(b, diversity, np.float32), np.full(b, calibration, np.float32), max_n).numpy()
    return [[int(x) for x in row if x >= 0] for row in out]


def test_no_diversity_and_no_calibration_give_exactly_the_score_order():
    r = requests()
    for i, chosen in enumerate(picks(r, 15, 0.0, 0.0)):
        order = [c for c in np.argsort(-r["scores"][i], kind="stable") if r["valid"][i][c]]
        assert chosen == order[:15]


@pytest.mark.parametrize("diversity,calibration", [(0.3, 0.0), (0.0, 2.0), (0.5, 1.0), (1.0, 0.0)])
def test_the_graph_chooses_as_the_numpy_reference(diversity, calibration):
    r = requests(seed=1)
    for i, chosen in enumerate(picks(r, 12, diversity, calibration)):
        assert chosen == select_reference(r["scores"][i], r["domains"][i], r["vectors"][i], r["valid"][i],
                                          r["target"][i], 12, diversity, calibration)


def test_full_diversity_never_repeats_a_near_duplicate():
    r = requests(seed=2, b=4, c=40)
    r["vectors"][:, 20:] = r["vectors"][:, :20]  # every item has a twin
    r["valid"][:] = True
    for chosen in picks(r, 20, 1.0, 0.0):
        assert len({c % 20 for c in chosen}) == len(chosen) == 20


@pytest.mark.parametrize("seed", range(6))
def test_the_selection_never_picks_an_item_twice_whatever_the_weights(seed):
    """A property over random requests, extreme weights included (3.4e38 calibration made every
    objective -inf and the greedy pick kept index 0): every pick is a valid, allowed candidate, none twice."""
    rng = np.random.default_rng(seed)
    extremes = np.array([0.0, 1e-30, 0.5, 1.0, 2.0, 100.0, 1e30, 3.4028235e38], np.float32)
    r = requests(seed=seed, b=16, c=int(rng.integers(5, 40)), d=3)
    b = len(r["scores"])
    r["target"][::3] = [0.2, 0.3, 0.5]
    r["target"][1::5] = [0.0, 1.0, 0.0]
    n = rng.integers(1, 21, b).astype(np.int32)
    diversity = rng.choice([0.0, 0.3, 1.0], b).astype(np.float32)
    calibration = rng.choice(extremes, b).astype(np.float32)
    out = select(r["scores"], r["domains"], r["vectors"], r["valid"], r["target"], n, diversity, calibration, 20)
    for i, row in enumerate(out.numpy()):
        chosen = [int(x) for x in row if x >= 0]
        allowed = {c for c in range(len(r["scores"][i])) if r["valid"][i][c] and r["target"][i][r["domains"][i][c]] > 0}
        assert len(chosen) == len(set(chosen)) == min(int(n[i]), len(allowed)), (calibration[i], diversity[i])
        assert set(chosen) <= allowed


def test_a_whole_share_for_one_domain_returns_that_domain_only():
    r = requests(seed=3)
    r["target"][:] = [0.0, 1.0, 0.0]
    for i, chosen in enumerate(picks(r, 10, 0.2, 0.1)):
        assert chosen and all(r["domains"][i][c] == 1 for c in chosen)


def test_calibration_brings_the_lists_shares_to_the_target():
    r = requests(seed=4, b=2, c=60, d=2)
    r["domains"][:] = np.arange(60) % 2
    r["scores"][:] = np.where(r["domains"] == 0, 1.0, 0.1) * r["scores"]  # relevance favours domain 0
    r["valid"][:] = True
    r["target"][:] = [0.5, 0.5]
    in_one = [[sum(r["domains"][i][c] == 1 for c in chosen) for i, chosen in enumerate(picks(r, 10, 0.0, weight))]
              for weight in (0.0, 1.0, 50.0)]
    for i in range(2):  # more of the target's share as the weight grows, all of it at a large weight
        assert in_one[0][i] <= 2 and in_one[0][i] < in_one[1][i] < 5 and in_one[2][i] == 5


def test_scores_of_different_domains_are_probabilities_of_the_next_interaction():
    history = np.array([[0, 0, 1, -1], [-1, -1, -1, -1]], np.int32)  # 2 in domain 0, 1 in domain 1; none
    shares = domain_shares(history, 2, prior=np.array([0.5, 0.5]), prior_weight=1.0).numpy()
    np.testing.assert_allclose(shares, [[2.5 / 4, 1.5 / 4], [0.5, 0.5]], rtol=1e-6)
    logits = np.array([[[2.0, 1.0, 0.0], [5.0, 5.0, 9.0]]] * 2, np.float32)  # (b, D lists, L)
    valid = np.array([[[True, True, True], [True, True, False]]] * 2)
    p = calibrated_scores(logits, valid, shares, np.array([0, 1])).numpy()
    np.testing.assert_allclose(p.sum(axis=-1), shares, rtol=1e-5)  # each domain's list holds its share
    assert p[0, 1, 2] == 0 and p[0, 1, 0] == pytest.approx(p[0, 1, 1])


def _feed_request(histories, n, diversity=0.0, calibration=0.0, shares=None, exclude=True):
    import tensorflow as tf

    width = max(len(h) for h in histories)
    ids = [[i for _, i in h] + [""] * (width - len(h)) for h in histories]
    domains = [[d for d, _ in h] + [""] * (width - len(h)) for h in histories]
    b = len(histories)
    return dict(history_item_ids=tf.constant(ids, tf.string), history_domains=tf.constant(domains, tf.string),
                n=tf.constant([n] * b, tf.int32), diversity=tf.constant([diversity] * b, tf.float32),
                calibration=tf.constant([calibration] * b, tf.float32),
                target_shares=tf.constant(shares if shares is not None else np.zeros((b, 0)), tf.float32),
                exclude_history=tf.constant([exclude] * b))


@pytest.fixture(scope="module")
def feed_model(tiny_exported):
    import tensorflow as tf

    config, run, out, _ = tiny_exported
    loaded = tf.saved_model.load(str(out / "recommender" / "1"))
    examples = run.data.test[0].examples
    items = run.data.catalogue.items.set_index("row")
    histories = [[(items.loc[r, schema.DOMAIN], items.loc[r, schema.ITEM_ID]) for r in row[row > 0]]
                 for row in examples.history[:4]]
    return loaded, run.data.catalogue.domain_names, histories


def test_the_served_feed_with_one_domains_whole_share_is_that_domains_recommendation(feed_model):
    import tensorflow as tf

    loaded, domains, histories = feed_model
    for d, domain in enumerate(domains):
        shares = np.zeros((len(histories), len(domains)), np.float32)
        shares[:, d] = 1.0
        feed = loaded.signatures["feed"](**_feed_request(histories, 6, shares=shares))
        top = loaded.signatures["serving_default"](**{k: v for k, v in _feed_request(histories, 6).items()
                                                     if k in ("history_item_ids", "history_domains",
                                                              "exclude_history")},
                                                  target_domain=tf.constant([domain] * len(histories)),
                                                  k=tf.constant([6] * len(histories)))
        assert feed["item_ids"].numpy().tolist() == top["item_ids"].numpy().tolist()
        assert {x.decode() for x in feed["domains"].numpy().ravel()} <= {domain, ""}


def test_the_served_feed_mixes_domains_in_each_domains_served_order(feed_model):
    loaded, domains, histories = feed_model
    feed = loaded.signatures["feed"](**_feed_request(histories, 12))
    for i, history in enumerate(histories):
        got = [(d.decode(), x.decode()) for d, x in zip(feed["domains"][i].numpy(), feed["item_ids"][i].numpy(),
                                                          strict=True) if x]
        scores = feed["scores"][i].numpy()[:len(got)]
        assert len(got) == 12 == len(set(got)) and not set(got) & set(history)
        assert len({d for d, _ in got}) > 1 and (np.diff(scores) <= 1e-7).all()  # the one scale's order


@pytest.mark.parametrize("change,named", [({"diversity": -0.1}, "diversity"), ({"calibration": float("nan")},
                                          "calibration"), ({"n": 21}, "n: must be at most 20"),
                                          ({"calibration": 3.4028235e38}, "calibration: must be a number from 0 to 100"),
                                          ({"calibration": 100.5}, "calibration: must be a number from 0 to 100"),
                                          ({"diversity": 1.5}, "diversity: must be a number from 0 to 1"),
                                          ({"shares": [[0.3, 0.3, 0.3]]}, "target_shares"),
                                          ({"shares": [[-2.0, -2.0, -2.0]]}, "target_shares: a row must be shares"),
                                          ({"shares": [[-1.0, -1.0, -0.5]]}, "target_shares: a row must be shares"),
                                          ({"shares": [[0.5, 0.5]]}, "target_shares")])
def test_bad_feed_requests_are_invalid_arguments_naming_the_input(feed_model, change, named):
    import tensorflow as tf

    loaded, _, histories = feed_model
    args = {"n": 5, "diversity": 0.0, "calibration": 0.0, "shares": None, **change}
    with pytest.raises(tf.errors.InvalidArgumentError, match=named):
        loaded.signatures["feed"](**_feed_request(histories[:1], **args))


def test_all_minus_one_shares_are_the_historys_shares(feed_model):
    loaded, domains, histories = feed_model
    plain = loaded.signatures["feed"](**_feed_request(histories[:2], 6, calibration=3.0))
    minus_one = loaded.signatures["feed"](**_feed_request(histories[:2], 6, calibration=3.0,
                                                          shares=np.full((2, len(domains)), -1.0, np.float32)))
    assert plain["item_ids"].numpy().tolist() == minus_one["item_ids"].numpy().tolist()


def test_the_largest_accepted_calibration_still_returns_distinct_items(feed_model):
    loaded, domains, histories = feed_model
    shares = np.array([[0.2, 0.3, 0.5][:len(domains)]] * 1, np.float32)
    shares /= shares.sum()
    feed = loaded.signatures["feed"](**_feed_request(histories[:1], 10, calibration=100.0, shares=shares))
    got = [x for x in feed["item_ids"][0].numpy() if x]
    assert len(got) == len(set(got)) == 10


@pytest.mark.parametrize("signature", ["serving_default", "feed"])
def test_an_unknown_history_domain_is_refused_as_an_unknown_target_domain_is(feed_model, signature):
    import tensorflow as tf

    loaded, domains, histories = feed_model
    request = _feed_request([[("garden", "BO00001"), *histories[0]]], 5)
    if signature == "serving_default":
        request = {k: v for k, v in request.items() if k in ("history_item_ids", "history_domains", "exclude_history")}
        request |= {"target_domain": tf.constant([domains[0]]), "k": tf.constant([5])}
    with pytest.raises(tf.errors.InvalidArgumentError, match="history_domains: unknown domain .*known domains"):
        loaded.signatures[signature](**request)
