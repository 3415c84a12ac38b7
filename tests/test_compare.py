"""crossrec and every baseline through the same evaluator; the report files."""

import json

import numpy as np
import pandas as pd
import pytest

from crossrec.cli import main
from crossrec.errors import ConfigError
from crossrec.pipelines.compare import compare_models
from crossrec.report import write_report
from ranking.prior import GRID


def test_all_models_and_slices_are_compared_and_reported(tiny_config, tmp_path):
    result = compare_models(tiny_config, zero_shot_domain="kitchen", progress=False)
    metrics = result.metrics
    assert set(metrics["model"]) == {"crossrec", "served", "popularity", "id_two_tower", "target_only"}
    assert set(metrics["slice"]) == {"warm", "cold_start", "new_item", "zero_shot"}
    # the report's seconds: each model's training and evaluation's own cost, apart
    assert {"crossrec", "ranking", "id_two_tower", "evaluation", "served evaluation", "zero_shot"} <= set(result.seconds)
    # what `auto` chose on validation (the cold-start prior is auto by default), for the report
    assert result.chosen[0]["ranking.cold_start_popularity"] in GRID
    # the served list is asked the same queries as every model, and ranks them as the re-ranking
    # table's served order does on the same merged lists (a target outside the list is a miss)
    served = metrics[metrics["model"] == "served"].set_index(["slice", "domain"])
    towers = metrics[metrics["model"] == "crossrec"].set_index(["slice", "domain"])
    assert set(served.index.get_level_values(0)) == {"warm", "cold_start", "new_item"}
    assert (served["queries"] == towers["queries"].loc[served.index]).all()
    rerank = result.reranking[result.reranking["model"] == "served"].set_index(["slice", "domain"])
    np.testing.assert_allclose(served["ndcg@10"], rerank["ndcg@10"].loc[served.index], rtol=1e-9)
    np.testing.assert_allclose(served["recall@10"], rerank["recall@10"].loc[served.index], rtol=1e-9)
    zero = metrics[metrics["slice"] == "zero_shot"]
    assert set(zero["domain"]) == {"kitchen", "all"}
    # zero-shot asks exactly the cold-start queries of its domain (the same users and targets)
    cold = metrics[(metrics["slice"] == "cold_start") & (metrics["domain"] == "kitchen")]
    assert set(zero["queries"]) == set(cold["queries"]) and cold["queries"].iloc[0] > 0
    assert set(metrics[metrics["slice"] == "cold_start"]["domain"]) == {"kitchen", "all"}
    # every cell has a 95% bootstrap interval around its value
    assert (metrics["ndcg@10_lo"] <= metrics["ndcg@10"] + 1e-12).all()
    assert (metrics["ndcg@10"] <= metrics["ndcg@10_hi"] + 1e-12).all()
    # crossrec against each baseline on the same queries: a paired difference with its interval
    paired = result.paired
    assert set(paired[paired["model"] == "served"]["versus"]) == {"crossrec", "popularity", "id_two_tower",
                                                                  "target_only"}
    assert set(paired[paired["model"] == "crossrec"]["versus"]) == {"popularity", "id_two_tower", "target_only"}
    paired = paired[paired["model"] == "crossrec"]
    row = paired[(paired["versus"] == "popularity") & (paired["slice"] == "warm") & (paired["domain"] == "all")].iloc[0]
    ours = metrics[(metrics["model"] == "crossrec") & (metrics["slice"] == "warm") & (metrics["domain"] == "all")]
    theirs = metrics[(metrics["model"] == "popularity") & (metrics["slice"] == "warm") & (metrics["domain"] == "all")]
    assert row["diff"] == pytest.approx(ours["ndcg@10"].iloc[0] - theirs["ndcg@10"].iloc[0])
    assert row["diff_lo"] <= row["diff"] <= row["diff_hi"] and 0 <= row["a_ahead"] <= 1
    path = write_report(metrics, tmp_path / "report", title="t", histories=result.histories, paired=result.paired,
                        ranks=result.ranks)
    text = path.read_text()
    assert "## NDCG@10 by slice and domain" in text and "| zero_shot | kitchen |" in text
    crossrec_warm = metrics[(metrics["model"] == "crossrec") & (metrics["slice"] == "warm") & (metrics["domain"] == "all")]
    row = crossrec_warm.iloc[0]
    assert f"{row['ndcg@10']:.4f} [{row['ndcg@10_lo']:.4f}, {row['ndcg@10_hi']:.4f}]" in text
    assert (tmp_path / "report" / "recall_at_k.png").stat().st_size > 1000
    assert (tmp_path / "report" / "training_curves.png").exists()
    assert text.index("## The served list (served) against each model") < text.index(
        "## crossrec's towers alone (crossrec) against each model")
    assert len(pd.read_parquet(tmp_path / "report" / "ranks.parquet")) == len(result.ranks) > 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]


def test_cli_train_and_evaluate(tiny_config, tmp_path, capsys):
    from crossrec.config import save_config

    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    assert main(["train", "retrieval", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet",
                 "--epochs", "1"]) == 0
    assert (tmp_path / "run" / "towers.weights.h5").exists()
    from crossrec.config import load_config

    assert load_config(tmp_path / "run" / "config.yaml").split.kind == "evaluation"  # the split that was used
    assert "trained on" in capsys.readouterr().out
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "rep"), "--quiet", "--epochs", "1",
                 "--models", "crossrec,popularity", "--seeds", "1"]) == 0
    assert "training seeds: 1" in (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "report.md").exists()
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "rep2"), "--models", "nope"]) == 2


def test_several_training_seeds_are_pooled_per_query(tiny_config):
    from dataclasses import replace

    from crossrec.pipelines.compare import compare_over_seeds

    config = replace(tiny_config, train=replace(tiny_config.train, epochs=1))
    result = compare_over_seeds(config, 2, models=["crossrec", "popularity"], progress=False)
    assert set(result.ranks["seed"]) == {0, 1}
    assert (result.metrics["seeds"] == 2).all()
    one = result.ranks[(result.ranks["model"] == "crossrec") & (result.ranks["slice"] == "warm")]
    by_seed = one.pivot_table(index="query", columns="seed", values="rank")
    assert not (by_seed[0] == by_seed[1]).all()  # another seed, another model
    warm = result.metrics[(result.metrics["model"] == "crossrec") & (result.metrics["slice"] == "warm")
                          & (result.metrics["domain"] == "all")].iloc[0]
    hits = (by_seed < 10).mean(axis=1)  # each query's recall@10 averaged over the two seeds
    assert warm["recall@10"] == pytest.approx(hits.mean())
    assert set(result.paired["versus"]) == {"popularity"}
    assert result.chosen == [{}, {}]  # one entry per seed; nothing was auto here
    with pytest.raises(ConfigError, match="seeds: expected at least 1"):
        compare_over_seeds(config, 0)


def test_data_too_short_to_hold_anything_out_is_a_clear_error(write):
    from crossrec.config import Config, DataConfig

    interactions = write("i.csv", "user_id,item_id,domain,timestamp\nu1,b1,books,1\nu1,m1,movies,2\n")
    items = write("t.csv", "item_id,domain,title\nb1,books,A book\nm1,movies,A film\n")
    config = Config(data=DataConfig(interactions=str(interactions), items=str(items)))
    # before: a KeyError traceback from the empty metrics table; now a ConfigError that says why
    with pytest.raises(ConfigError, match="nothing to evaluate|no training examples: every user needs"):
        compare_models(config, models=("crossrec",), progress=False)
