"""What shapes the served list, and nothing else (``ServedListSpec``): how many of the towers'
candidates are merged with each candidate source's, how new items are placed and the
cold-start popularity prior's weight. The ranking run chooses and stores it
(``ranking_spec.json``: ``served_list``); the evaluator's ``served`` order
(``ranking.scoring.served_order``) and the ``recommender`` SavedModel (``serving.signatures``)
both read it, never the training configuration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from crossrec.config import Config


@dataclass(frozen=True)
class ServedListSpec:
    # the towers' top candidates merged in (ranking.candidates)
    candidates: int = 50
    # each candidate source's proposals (ranking.source_candidates; the sources are the ranker's)
    source_candidates: int = 25
    # retrieval_rank: a new item keeps the towers' place; ranker: the ranker orders everything
    new_items: Literal["retrieval_rank", "ranker"] = "retrieval_rank"
    # weight of log popularity on a cross-domain cold-start query's ranker scores (ranking.policy)
    cold_start_popularity: float = 0.0

    @classmethod
    def from_config(cls, config: Config, cold_start_popularity: float | None = None) -> ServedListSpec:
        """The spec ``config.ranking`` asks for; ``cold_start_popularity``: the weight chosen
        for ``auto`` (a number in the config is taken as it is)."""
        r = config.ranking
        weight = r.cold_start_popularity if cold_start_popularity is None else cold_start_popularity
        if weight == "auto":
            raise ValueError("ServedListSpec.from_config: cold_start_popularity is auto; pass the chosen weight")
        return cls(int(r.candidates), int(r.source_candidates), r.new_items, float(weight))

    @classmethod
    def stored(cls, spec: dict, config: Config) -> ServedListSpec:
        """From a ranking run's ``ranking_spec.json`` (a run written before the spec was stored:
        its config and the weight it stored alone)."""
        if "served_list" in spec:
            return cls(**spec["served_list"])
        return cls.from_config(config, float(spec.get("cold_start_popularity", 0.0)))

    def to_dict(self) -> dict:
        return asdict(self)
