"""The served order's popularity prior for cross-domain cold-start queries (ranking.policy,
ranking.prior): it moves only cold-start lists, it is chosen on validation, and the SavedModel
serves exactly the order the evaluator measures."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from crossrec.data.splits import COLD_START
from crossrec.errors import ConfigError
from ranking.policy import with_popularity_prior
from ranking.prior import GRID, choose_cold_start_popularity
from ranking.served_list import ServedListSpec
from tests.test_serving import assert_serves_in_order


def test_the_prior_moves_only_the_lists_of_cold_start_queries():
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]], np.float32)
    candidates = np.array([[1, 2, 3], [1, 2, 3]])
    popularity = np.array([0, 0, 10, 1000], np.float32)
    out = with_popularity_prior(scores, candidates, popularity, np.array([True, False]), 1.0).numpy()
    np.testing.assert_allclose(out[0], scores[0] + np.log1p(popularity[[1, 2, 3]]), rtol=1e-6)
    np.testing.assert_array_equal(out[1], scores[1])  # a query with history in the domain: as the ranker said
    assert np.argmax(out[0]) == 2  # the popular item leads the cold-start list
    np.testing.assert_array_equal(with_popularity_prior(scores, candidates, popularity, np.array([True, True]), 0.0)
                                  .numpy(), scores)


class _Data:
    def __init__(self, validation):
        self.validation = validation


def test_a_number_is_kept_auto_chooses_on_validation_and_a_negative_weight_is_refused(tiny_config):
    fixed = replace(tiny_config, ranking=replace(tiny_config.ranking, cold_start_popularity=0.5))
    assert choose_cold_start_popularity(None, _Data([]), fixed) == (0.5, None)
    auto = replace(tiny_config, ranking=replace(tiny_config.ranking, cold_start_popularity="auto"))
    weight, evidence = choose_cold_start_popularity(None, _Data([("warm", [1])]), auto)
    assert weight == 0.0 and "no cross-domain cold-start" in evidence["why"]
    with pytest.raises(ConfigError, match="cold_start_popularity"):
        choose_cold_start_popularity(None, _Data([]), replace(tiny_config, ranking=replace(
            tiny_config.ranking, cold_start_popularity=-1.0)))


def test_auto_keeps_no_prior_unless_it_wins_by_the_margin_and_records_every_weight(tiny_pipeline):
    from ranking.mining import mine_ranking_data
    from ranking.run_folder import load_ranking
    from ranking.scoring import served_ranker

    config, run, _, ranking_dir = tiny_pipeline
    teacher, student, _ = load_ranking(ranking_dir)
    data = mine_ranking_data(run.model, run.data, config)
    auto = replace(config, ranking=replace(config.ranking, cold_start_popularity="auto"))
    weight, evidence = choose_cold_start_popularity(served_ranker(teacher, student, config), data, auto)
    scores = {float(k): v for k, v in evidence["validation_ndcg_at_10"].items()}
    assert sorted(scores) == sorted(GRID) and weight in scores
    best = max(scores, key=scores.get)
    assert weight == (best if scores[best] > scores[0.0] * (1 + config.towers.auto_margin) else 0.0)


def test_the_recommender_serves_the_prior_exactly_as_the_evaluator_measures_it(tiny_pipeline, tmp_path):
    from ranking.mining import candidate_lists, text_vectors
    from ranking.run_folder import load_ranking
    from ranking.scoring import served_order
    from ranking.tables import build_tables
    from serving.export import export_models

    config, run, retrieval_dir, ranking_dir = tiny_pipeline
    ranking = tmp_path / "ranking"
    shutil.copytree(ranking_dir, ranking)
    spec = json.loads((ranking / "ranking_spec.json").read_text())
    served_list = {**spec["served_list"], "cold_start_popularity": 2.0}
    (ranking / "ranking_spec.json").write_text(json.dumps({**spec, "served_list": served_list}))
    result = export_models(retrieval_dir, tmp_path / "saved_models", ranking_dir=ranking, models=["recommender"],
                           progress=False)
    assert result is not None
    _, student, _ = load_ranking(ranking)
    data = run.data
    tables = build_tables(data.train, data.catalogue, run.model.all_item_embeddings(), text_vectors(run.model),
                          sources=config.ranking.sources, per_domain=config.ranking.source_neighbours)
    cold = [q for q in data.test if q.slice == COLD_START][0].examples
    examples = cold.subset(np.flatnonzero((cold.history > 0).any(axis=1))[:6])
    lists = candidate_lists(run.model, examples, tables, data.catalogue, config.ranking)
    with_prior = np.where(lists.candidates > 0, served_order(student, lists, tables, ServedListSpec(**served_list)),
                          -np.inf)
    without = np.where(lists.candidates > 0, served_order(student, lists, tables, ServedListSpec.from_config(config, 0.0)),
                       -np.inf)
    expected = np.take_along_axis(lists.candidates, np.argsort(-with_prior, axis=1, kind="stable"), 1)
    assert (expected != np.take_along_axis(lists.candidates, np.argsort(-without, axis=1, kind="stable"), 1)).any()
    _, *answers = assert_serves_in_order(tmp_path / "saved_models" / "recommender" / "1", data.catalogue, lists,
                                         with_prior)
    assert all(a["history_in_domain"].numpy().tolist() == [0] for a in answers)
