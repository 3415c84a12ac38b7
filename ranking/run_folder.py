"""A ranking run's folder: what ``train_ranking`` writes (``save_ranking``) and how the rankers
come back from it (``load_ranking``): their weights, ``ranking_spec.json`` (the catalogue's shape,
the rankers' and the served list's specs), the config, the test metrics and the run summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from crossrec.config import Config, load_config, save_config
from crossrec.errors import ConfigError
from crossrec.typed import to_dict
from ranking.evaluate import source_recall
from ranking.fit import build_ranker
from ranking.model import RankingModel
from ranking.ranker_spec import STUDENT, TEACHER, RankerSpec
from ranking.tables import FeatureTables

if TYPE_CHECKING:  # the run is made by ranking.train, which writes it through here
    from ranking.train import RankingRun


def save_ranking(run: RankingRun, config: Config) -> None:
    out = run.out_dir
    data = run.data
    spec = {"num_items": int(data.catalogue.size), "embedding_dim": int(data.tables.item_embeddings.shape[1]),
            "domains": data.catalogue.domains, "rating_mean": data.rating_mean,
            "history_length": config.towers.history_length, "served_list": run.served_list.to_dict(),
            "rankers": {ranker.name: ranker.ranker_spec.to_dict() for ranker in (run.teacher, run.student) if ranker},
            "sources": [{"name": t.name, "width": int(t.neighbours.shape[1]), "position_decay": t.position_decay}
                        for t in data.tables.sources]}
    (out / "ranking_spec.json").write_text(json.dumps(spec, indent=2))
    save_config(config, out / "config.yaml")
    run.teacher.save_weights(str(out / "teacher.weights.h5"))
    if run.student is not None:
        run.student.save_weights(str(out / "student.weights.h5"))
    run.metrics.to_csv(out / "rerank_metrics.csv", index=False)
    recall = source_recall(data.test, data.catalogue)
    recall.to_csv(out / "source_recall.csv", index=False)
    summary = {"training_lists": len(data.train), "list_length": int(data.train.candidates.shape[1]),
               "validation_lists": sum(len(v) for _, v in data.validation),
               "test_lists": sum(len(v) for _, v in data.test), "seconds": run.seconds, "histories": run.histories,
               "test_metrics": json.loads(run.metrics.to_json(orient="records")),
               "source_recall": json.loads(recall.to_json(orient="records")),
               "ranking_config": to_dict(config.ranking),
               **({"cold_start_popularity": run.prior_choice} if run.prior_choice else {})}
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))


def load_ranking(out_dir: str | Path) -> tuple[RankingModel, RankingModel | None, Config]:
    """Rebuilds the teacher (and student) written by ``train_ranking`` with their weights."""
    out = Path(out_dir)
    if not (out / "teacher.weights.h5").exists():
        raise ConfigError(f"{out} holds no trained ranker (teacher.weights.h5); run `crossrec train ranking` first")
    config = load_config(out / "config.yaml")
    spec = json.loads((out / "ranking_spec.json").read_text())
    n, e = spec["num_items"], spec["embedding_dim"]
    tables = FeatureTables.empty(n, e, len(spec["domains"]), spec["rating_mean"],
                                 [(s["name"], s["width"], s["position_decay"]) for s in spec.get("sources", [])])
    teacher = build_ranker(RankerSpec.stored(spec, config, TEACHER), tables, name=TEACHER)
    teacher.load_weights(str(out / "teacher.weights.h5"))
    teacher.features.sort_neighbours()
    student = None
    if (out / "student.weights.h5").exists():
        student = build_ranker(RankerSpec.stored(spec, config, STUDENT), tables, name=STUDENT)
        student.load_weights(str(out / "student.weights.h5"))
        student.features.sort_neighbours()
    return teacher, student, config
