"""``ranking.cold_start_popularity: auto``: the weight of the popularity prior in cold-start
queries' served order (``ranking.policy.with_popularity_prior``), chosen on the validation
split's cross-domain cold-start lists: each weight of ``GRID`` orders those lists as the
``recommender`` would, and the best NDCG@10 is kept when it is more than ``towers.auto_margin``
above no prior (0, the value kept otherwise). The choice and every weight's score go into the
ranking run's summary and the export's metadata."""

from __future__ import annotations

from dataclasses import replace

from crossrec.config import Config
from crossrec.data.splits import COLD_START
from crossrec.errors import ConfigError
from crossrec.metrics import per_query
from ranking.evaluate import list_ranks
from ranking.model import RankingModel
from ranking.scoring import served_order
from ranking.served_list import ServedListSpec

GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def choose_cold_start_popularity(served: RankingModel, data, config: Config) -> tuple[float, dict | None]:
    """(the weight to serve with, the evidence; None when the setting is a number)."""
    setting = config.ranking.cold_start_popularity
    if setting != "auto":
        if setting < 0:
            raise ConfigError(f"ranking.cold_start_popularity must be auto or at least 0, got {setting}")
        return float(setting), None
    lists = [lists for name, lists in data.validation if name == COLD_START and len(lists)]
    if not lists:
        return 0.0, {"chosen": 0.0, "why": "no cross-domain cold-start validation lists to choose on"}
    scores = {}
    spec = ServedListSpec.from_config(config, 0.0)
    for weight in GRID:
        order = served_order(served, lists[0], data.tables, replace(spec, cold_start_popularity=weight))
        scores[weight] = float(per_query(list_ranks(lists[0], order), "ndcg@10").mean())
    best = max(scores, key=scores.__getitem__)
    chosen = best if scores[best] > scores[0.0] * (1 + config.towers.auto_margin) else 0.0
    return chosen, {"chosen": chosen, "queries": len(lists[0]), "margin": config.towers.auto_margin,
                    "validation_ndcg_at_10": {str(w): round(v, 5) for w, v in scores.items()}}
