"""What shapes one ranker, and nothing else (``RankerSpec``): its network, its inputs, its task
weights, the residual on the towers' score and the history length it reads. The ranking run
derives the teacher's and the student's from the configuration once (``RankerSpec.of``) and
stores them in ``ranking_spec.json`` (``rankers``); ``ranking.train.build_ranker``, loading a run,
``crossrec catalogue add`` and the benchmarks build a ranker from a spec, never from the
training configuration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from crossrec.config import Config

TEACHER, STUDENT = "ranker", "student"


@dataclass(frozen=True)
class RankerSpec:
    # its inputs (ranking.features)
    features: tuple[str, ...]
    # history slots a query holds
    history_length: int
    # DCN-v2 cross layers
    cross_layers: int = 2
    # rank of the low-rank cross layers (None: full rank)
    cross_projection_dim: int | None = None
    # widths of the deep ReLU layers
    deep_layers: tuple[int, ...] = (256, 128)
    # dropout in the deep layers
    dropout: float = 0.1
    # each task's loss weight (engagement, rating; a rating head exists where its weight is > 0)
    task_weights: dict[str, float] = field(default_factory=lambda: {"engagement": 1.0})
    # engagement = this x the towers' score + the head's correction (None: the head alone)
    retrieval_scale: float | None = None
    # share of the engagement loss taken from the teacher's list scores (the student's)
    distillation_weight: float = 0.0

    @classmethod
    def of(cls, config: Config, role: str) -> RankerSpec:
        """The ``role`` (``TEACHER`` or ``STUDENT``) ranker ``config.ranking`` asks for."""
        r = config.ranking
        network = r.student if role == STUDENT else r.teacher
        return cls(tuple(network.features or r.features), int(config.towers.history_length),
                   int(network.cross_layers), network.cross_projection_dim, tuple(int(u) for u in network.deep_layers),
                   float(network.dropout), {k: float(v) for k, v in r.task_weights.items()},
                   1.0 / config.train.temperature if r.residual_on_retrieval else None,
                   float(r.distillation_weight) if role == STUDENT else 0.0)

    @classmethod
    def stored(cls, spec: dict, config: Config, role: str) -> RankerSpec:
        """From a ranking run's ``ranking_spec.json`` (a run written before the specs were
        stored: from its config)."""
        if role in spec.get("rankers", {}):
            saved = dict(spec["rankers"][role])
            return cls(**{**saved, "features": tuple(saved["features"]), "deep_layers": tuple(saved["deep_layers"])})
        return cls.of(config, role)

    def to_dict(self) -> dict:
        return asdict(self)
