"""The ranking model: each block alone, the loss weighting, candidate mining, fit, save/reload."""

from dataclasses import replace

import numpy as np
import pytest

from crossrec import schema
from crossrec.config import RankingConfig
from crossrec.errors import ConfigError
from crossrec.features import Examples
from ranking.candidates import CandidateLists
from ranking.evaluate import MISS, list_ranks
from ranking.model import (
    DISTILLATION,
    ENGAGEMENT,
    RATING,
    CrossNetwork,
    RankingFeatures,
    RankingModel,
)
from ranking.ranker_spec import RankerSpec
from ranking.tables import FeatureTables, fresh_items, label_tail

# --- blocks alone -------------------------------------------------------------------------------

# 5 item rows (0 = padding), 2-d embeddings, domains 1 and 2
ITEMS = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [2, 0]], np.float32)
DOMAIN = np.array([0, 1, 1, 2, 2], np.int32)
COUNTS = np.array([0, 5, 1, 0, 2], np.float32)  # training interactions per row


def features_layer(features=("retrieval_score", "domain", "log_popularity", "history_length", "recency"), **tables):
    return RankingFeatures(FeatureTables(ITEMS, DOMAIN, 3, COUNTS, **tables), features=features)


def test_features_match_a_numpy_reference():
    layer = features_layer()
    # history of 4 (right-aligned): padding, row 1 (domain 1), row 3 (domain 2), row 2 (domain 1)
    inputs = {"query": np.array([[2.0, 1.0]], np.float32), "history": np.array([[0, 1, 3, 2]], np.int32),
              "candidates": np.array([[1, 4, 0]], np.int32)}
    out = layer(inputs).numpy()[0]
    assert out.shape == (3, layer.output_dim) and layer.output_dim == 1 + 3 + 1 + 2 + 2
    # retrieval score: q . item
    np.testing.assert_allclose(out[:, 0], [2.0, 4.0, 0.0])
    # domain one-hot
    np.testing.assert_allclose(out[0, 1:4], [0, 1, 0])
    np.testing.assert_allclose(out[1, 1:4], [0, 0, 1])
    np.testing.assert_allclose(out[:, 4], np.log1p(COUNTS[[1, 4, 0]]), rtol=1e-6)
    # history length in the candidate's domain (2 in domain 1, 1 in domain 2) and in all (3)
    np.testing.assert_allclose(out[0, 5:7], np.log1p([2, 3]), rtol=1e-6)
    np.testing.assert_allclose(out[1, 5:7], np.log1p([1, 3]), rtol=1e-6)
    # recency: domain 1 was the last interaction (0 since), domain 2 one interaction before it (1/4)
    np.testing.assert_allclose(out[0, 7:9], [0.0, 1.0])
    np.testing.assert_allclose(out[1, 7:9], [0.25, 1.0])


def test_training_positives_leave_their_own_interaction_out_of_the_popularity():
    layer = features_layer(("log_popularity",))
    inputs = {"query": np.zeros((1, 2), np.float32), "history": np.zeros((1, 4), np.int32),
              "candidates": np.array([[2, 1]], np.int32)}
    served = layer(inputs).numpy()[0, :, 0]
    trained = layer({**inputs, "popularity_offset": np.array([[1.0, 0.0]], np.float32)}).numpy()[0, :, 0]
    # row 2 has one training interaction: the positive it labels; as a positive it counts 0
    np.testing.assert_allclose(served, np.log1p([1, 5]), rtol=1e-6)
    np.testing.assert_allclose(trained, np.log1p([0, 5]), rtol=1e-6)


def test_item_rating_is_the_mean_training_rating_leaving_out_the_labels_own():
    sums, counts = np.array([0, 9, 0, 4, 0], np.float32), np.array([0, 2, 0, 1, 0], np.float32)
    layer = features_layer(("item_rating",), rating_sum=sums, rating_count=counts, rating_mean=3.0)
    inputs = {"query": np.zeros((1, 2), np.float32), "history": np.zeros((1, 4), np.int32),
              "candidates": np.array([[1, 3, 2]], np.int32)}
    # row 1: mean 4.5 (centred 1.5); row 3: 4 (1.0); row 2: never rated
    np.testing.assert_allclose(layer(inputs).numpy()[0], [[1.5, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # as training positives with their own ratings 5 and 4: row 1 keeps the other rating, row 3 none
    own = {"rating": np.array([[5.0, 4.0, 0.0]], np.float32), "rating_weight": np.array([[1.0, 1.0, 0.0]], np.float32),
           "popularity_offset": np.array([[1.0, 1.0, 0.0]], np.float32)}
    np.testing.assert_allclose(layer({**inputs, **own}).numpy()[0], [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])


def test_recency_of_a_domain_the_user_never_visited_is_one_with_a_zero_flag():
    layer = features_layer(("recency",))
    out = layer({"query": np.zeros((1, 2), np.float32), "history": np.array([[0, 0, 1, 2]], np.int32),
                 "candidates": np.array([[3]], np.int32)}).numpy()
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0])


def test_cross_network_computes_dcn_v2_and_low_rank_has_fewer_weights():
    x0 = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    full = CrossNetwork(num_layers=1)
    out = full(x0).numpy()
    kernel, bias = (w.numpy() for w in full.crosses[0].weights)
    # x1 = x0 * (x0 W + b) + x0
    np.testing.assert_allclose(out, x0 * (x0 @ kernel + bias) + x0, rtol=1e-5, atol=1e-5)
    low = CrossNetwork(num_layers=2, projection_dim=2)
    assert low(x0).shape == (4, 6)
    assert sum(np.prod(w.shape) for w in low.weights) < 2 * sum(np.prod(w.shape) for w in full.weights)


def small_model(**kwargs) -> RankingModel:
    features = features_layer()
    model = RankingModel(features, network=RankerSpec(features.features, 4, cross_layers=1, deep_layers=(8,), dropout=0.0),
                         **kwargs)
    return model


def labelled_batch():
    return {"query": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32),
            "history": np.array([[0, 1, 2, 3], [0, 0, 4, 1]], np.int32),
            "candidates": np.array([[1, 2, 0], [3, 4, 2]], np.int32),
            ENGAGEMENT: np.array([[1, 0, 0], [0, 1, 0]], np.float32),
            RATING: np.array([[4, 0, 0], [0, 2, 0]], np.float32),
            "rating_weight": np.array([[1, 0, 0], [0, 1, 0]], np.float32),
            "teacher": np.array([[2.0, -1.0, 0.0], [0.5, 1.5, -2.0]], np.float32)}


def test_heads_score_every_candidate_of_every_list():
    assert set(small_model()(labelled_batch())) == {ENGAGEMENT}  # no rating head without a rating weight
    out = small_model(task_weights={RATING: 0.5})(labelled_batch())
    assert set(out) == {ENGAGEMENT, RATING}
    assert out[ENGAGEMENT].shape == (2, 3) and out[RATING].shape == (2, 3)


def test_total_loss_is_the_configured_weighted_sum_of_the_task_losses():
    model = small_model(task_weights={ENGAGEMENT: 2.0, RATING: 0.5}, distillation_weight=0.25)
    batch = labelled_batch()
    losses = {k: float(v) for k, v in model.task_losses(batch).items()}
    assert set(losses) == {ENGAGEMENT, RATING, DISTILLATION}
    expected = 2.0 * (0.75 * losses[ENGAGEMENT] + 0.25 * losses[DISTILLATION]) + 0.5 * losses[RATING]
    assert float(model.compute_loss(batch)) == pytest.approx(expected, rel=1e-5)
    # a zero rating weight drops the rating task; no teacher scores drop distillation
    batch.pop("teacher")
    model.task_weights[RATING] = 0.0
    assert set(model.task_losses(batch)) == {ENGAGEMENT}
    assert float(model.compute_loss(batch)) == pytest.approx(2.0 * losses[ENGAGEMENT], rel=1e-5)


def test_engagement_loss_ignores_padding_candidates():
    model = small_model()
    batch = labelled_batch()
    changed = dict(batch, engagement=batch[ENGAGEMENT].copy())
    changed[ENGAGEMENT][0, 2] = 1.0  # a label on the padding slot of list 0
    assert float(model.task_losses(changed)[ENGAGEMENT]) == pytest.approx(
        float(model.task_losses(batch)[ENGAGEMENT]), rel=1e-6)


def test_engagement_loss_is_softmax_cross_entropy_over_each_list():
    model = small_model()
    batch = labelled_batch()
    logits = model(batch)[ENGAGEMENT].numpy()
    masked = np.where(batch["candidates"] > 0, logits, -1e9)
    log_softmax = masked - np.log(np.exp(masked - masked.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - masked.max(1, keepdims=True)
    expected = -np.mean([log_softmax[0, 0], log_softmax[1, 1]])
    assert float(model.task_losses(batch)[ENGAGEMENT]) == pytest.approx(expected, rel=1e-4)


def test_unknown_ranking_feature_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="ranking.features: unknown 'age'.*retrieval_score"):
        RankingConfig(features=["query", "age"])


# --- list metrics --------------------------------------------------------------------------------

def test_list_ranks_count_ties_half_and_missing_targets_as_misses():
    ex = Examples(np.zeros((3, 1), np.int32), np.array([5, 6, 9], np.int32), np.ones(3, np.int32),
                  np.array(["a", "b", "c"], object), np.ones(3, np.float32))
    lists = CandidateLists(ex, np.zeros((3, 2), np.float32), np.array([[4, 5, 7], [6, 8, 0], [1, 2, 3]], np.int32),
                           np.zeros((3, 3), np.float32))
    scores = np.array([[3.0, 1.0, 2.0], [0.0, 0.0, 9.0], [1, 2, 3]])
    # list 1: the padding slot's high score is ignored; the tie with row 8 counts half (rounded down)
    np.testing.assert_array_equal(list_ranks(lists, scores), [2, 0, MISS])


# --- on a trained tiny retrieval model -----------------------------------------------------------

@pytest.fixture(scope="module")
def retrieval_run(tiny_pipeline):
    config, run, retrieval_dir, _ = tiny_pipeline
    return config, run, retrieval_dir


def test_training_lists_come_from_training_interactions_only(retrieval_run):
    from ranking.mining import mine_ranking_data

    config, run, _ = retrieval_run
    data = mine_ranking_data(run.model, run.data, config)
    frame = run.data.interactions
    catalogue = run.data.catalogue
    rows = catalogue.rows(frame[schema.DOMAIN], frame[schema.ITEM_ID])
    is_train = (frame[schema.SPLIT] == schema.TRAIN).to_numpy()
    users = frame[schema.USER_ID].to_numpy()
    # (user, item) pairs that only validation / test interactions have
    held_out = (set(zip(users[~is_train], rows[~is_train], strict=True))
                - set(zip(users[is_train], rows[is_train], strict=True)))
    assert held_out
    train = data.train
    # every training list holds its target, and no (user, target) is held out
    assert (train.labels.sum(axis=1) == 1).all()
    pairs = set(zip(train.examples.user_id, train.examples.target, strict=True))
    assert pairs and not pairs & held_out
    # nor is any history item of a training list
    for user, history in zip(train.examples.user_id, train.examples.history, strict=True):
        assert not {(user, r) for r in history[history > 0]} & held_out
    # lists are K retrieved + the random negatives + each source's proposals, all from the target's domain
    ranking = config.ranking
    assert train.candidates.shape[1] == 10 + 2 + len(ranking.sources) * ranking.source_candidates
    # the labels are the users' last training interactions, which the label view does not count
    tail = run.data.train[label_tail(run.data.train, ranking.label_tail)]
    tail_pairs = set(zip(tail[schema.USER_ID], catalogue.rows(tail[schema.DOMAIN], tail[schema.ITEM_ID]), strict=True))
    assert pairs <= tail_pairs
    counted = data.tables.popularity - data.label_tables.popularity
    fresh = fresh_items(run.data.train, catalogue, ranking.fresh_item_share, ranking.seed)  # every interaction out
    assert fresh.sum() == round(ranking.fresh_item_share * (data.tables.popularity > 0).sum())
    np.testing.assert_array_equal(counted[fresh], data.tables.popularity[fresh])
    np.testing.assert_array_equal(counted[~fresh], np.bincount(
        catalogue.rows(tail[schema.DOMAIN], tail[schema.ITEM_ID]), minlength=catalogue.size)[~fresh])
    same = catalogue.item_domain[train.candidates] == catalogue.item_domain[train.examples.target][:, None]
    assert same[train.candidates > 0].all()


def test_evaluation_lists_leave_out_seen_items_and_do_not_force_the_target_in(retrieval_run):
    from ranking.mining import mine_ranking_data

    config, run, _ = retrieval_run
    data = mine_ranking_data(run.model, run.data, config)
    for (name, lists), queries in zip(data.test, [q for q in run.data.test if len(q.examples)], strict=True):
        assert name == queries.slice
        for candidates, seen, target in zip(lists.candidates, queries.seen, lists.examples.target, strict=True):
            assert not (set(candidates) & set(seen)) - {target, 0}
        # retrieval order = the towers' dot products, best first
        assert (np.diff(lists.retrieval_scores[:, :10], axis=1) <= 1e-6).all()
    assert any((lists.labels.sum(axis=1) == 0).any() for _, lists in data.test)


def test_fit_lowers_the_loss_distils_a_student_and_reloads_with_identical_scores(retrieval_run, tmp_path):
    from crossrec.evaluation import SERVED
    from ranking.ranker_spec import STUDENT, TEACHER
    from ranking.run_folder import load_ranking
    from ranking.scoring import score_lists
    from ranking.train import RETRIEVAL_ORDER, train_ranking

    config, _, retrieval_dir = retrieval_run
    run = train_ranking(config, retrieval_dir, tmp_path / "ranking", progress=False)
    assert len(run.data.train) > 30
    loss = run.histories[TEACHER]["loss"]
    assert min(loss[1:]) < loss[0]  # 80 users at learning rate 0.01: the epochs' losses are noisy
    assert run.student is not None and STUDENT in run.histories
    def trainable(model):
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    assert trainable(run.student) < trainable(run.teacher) / 4
    assert set(run.metrics["model"]) == {RETRIEVAL_ORDER, TEACHER, STUDENT, SERVED}
    assert run.metrics.loc[run.metrics["model"] == TEACHER, "rmse"].notna().all()  # the built-in data has ratings
    # the three orders share the same lists: the same share of targets in them
    in_list = run.metrics.pivot_table(index=["slice", "domain"], columns="model", values="in_list")
    assert (in_list.nunique(axis=1) == 1).all()
    for name in ("teacher.weights.h5", "student.weights.h5", "rerank_metrics.csv", "run_summary.json",
                 "checkpoints/ranker.best.h5"):
        assert (tmp_path / "ranking" / name).exists(), name
    teacher, student, _ = load_ranking(tmp_path / "ranking")
    lists = run.data.test[0][1]
    # (float32 rounding can swap two near-equal candidates in a list-rank feature: a small step, no more)
    np.testing.assert_allclose(score_lists(teacher, lists), score_lists(run.teacher, lists), rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(score_lists(student, lists), score_lists(run.student, lists), rtol=2e-3, atol=1e-4)


def test_ranking_on_other_data_than_the_towers_is_refused(retrieval_run, tmp_path):
    from ranking.train import train_ranking

    config, _, retrieval_dir = retrieval_run
    other = replace(config, data=replace(config.data, synth=replace(config.data.synth, n_items=100)))
    with pytest.raises(ConfigError, match="trained on other data"):
        train_ranking(other, retrieval_dir, tmp_path / "ranking", progress=False)


def test_data_without_ratings_trains_engagement_only(retrieval_run):
    from ranking.train import train_ranking

    config, run, _ = retrieval_run
    no_ratings = replace(run, data=replace(run.data, examples=replace(run.data.examples, rating=None)))
    result = train_ranking(replace(config, ranking=replace(config.ranking, epochs=1, distill=False)), no_ratings,
                           progress=False)
    assert result.data.rating_mean is None
    assert result.teacher.task_weights[RATING] == 0.0
    assert result.metrics["rmse"].isna().all()
    assert not any("rating" in key for key in result.histories["ranker"])  # no rating_rmse of 0.0 printed


def test_train_ranking_from_the_command_line_uses_the_towers_config(retrieval_run, tmp_path, capsys):
    from crossrec.cli import main

    _, _, retrieval_dir = retrieval_run
    assert main(["train", "ranking", "--retrieval", str(retrieval_dir), "--out", str(tmp_path / "r"),
                 "--epochs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "order vs re-ranked vs served" in printed and "share of test targets in each source" in printed
    assert (tmp_path / "r" / "teacher.weights.h5").exists()
    assert main(["train", "ranking", "--retrieval", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "run `crossrec train retrieval" in capsys.readouterr().err


def test_a_run_stores_its_rankers_specs_and_one_without_them_is_rebuilt_from_its_config(tiny_pipeline, tmp_path):
    import json
    import shutil

    from ranking.ranker_spec import STUDENT, TEACHER, RankerSpec
    from ranking.run_folder import load_ranking

    config, _, _, ranking_dir = tiny_pipeline
    spec = json.loads((ranking_dir / "ranking_spec.json").read_text())
    for role in (TEACHER, STUDENT):  # what shapes each ranker, stored: it equals what the config asks
        assert RankerSpec.stored(spec, config, role) == RankerSpec.of(config, role)
    assert spec["rankers"][STUDENT]["deep_layers"] == [8] and spec["rankers"][STUDENT]["distillation_weight"] > 0
    older = tmp_path / "older"
    shutil.copytree(ranking_dir, older)
    (older / "ranking_spec.json").write_text(json.dumps({k: v for k, v in spec.items() if k != "rankers"}))
    new_teacher, new_student, _ = load_ranking(ranking_dir)
    old_teacher, old_student, _ = load_ranking(older)
    for new, old in ((new_teacher, old_teacher), (new_student, old_student)):
        assert [w.shape for w in new.weights] == [w.shape for w in old.weights]
        assert all(np.array_equal(a, b) for a, b in zip(new.get_weights(), old.get_weights(), strict=True))
