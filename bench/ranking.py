"""Ranking benchmark: does re-ranking beat the retrieval order, and what does distillation keep?

    python -m bench.ranking [--quick]

Trains the retrieval towers and then the rankers on the built-in data, and measures on the test
candidate lists (warm and cross-domain cold-start queries, top-K by the towers):
- NDCG@10 of the retrieval order, the ranker (teacher) and the distilled student
  (target from issue 4: the ranker beats the retrieval order; the student keeps >= 95% of the
  teacher's NDCG@10);
- scoring time of the same lists by the teacher and by the student (target: student <= 1/4).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from bench.common import Results, bench_parser
from crossrec.config import Config, EncoderConfig, SynthConfig
from crossrec.data.splits import NEW_ITEM
from crossrec.features import concat_examples
from crossrec.metrics import ranking_metrics
from ranking.candidates import CandidateLists
from ranking.evaluate import list_ranks
from ranking.scoring import score_lists
from ranking.train import train_ranking
from towers.train import train_retrieval


def scoring_seconds(model, lists: CandidateLists, repeats: int = 5, batch: int = 1024) -> float:
    """Median wall time of the model alone scoring every list (batches of ``batch`` lists,
    already in tensors), after one call that traces it."""
    import tensorflow as tf

    features = lists.features()
    batches = [{k: tf.constant(v[s:s + batch]) for k, v in features.items()} for s in range(0, len(lists), batch)]
    serve = tf.function(lambda f: model(f, training=False)["engagement"], reduce_retracing=True)
    for part in batches[:2]:
        serve(part)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for part in batches:
            serve(part).numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "small data and few epochs (a smoke run)")
    args = parser.parse_args(argv)
    results = Results("ranking")
    config = Config(encoder=EncoderConfig(preset=args.preset))
    if args.quick:
        config = replace(config, data=replace(config.data, synth=SynthConfig(n_users=200, n_items=300,
                                                                            n_interactions=5000)),
                         train=replace(config.train, epochs=2),
                         ranking=replace(config.ranking, epochs=2, max_queries=2000))
    retrieval = train_retrieval(config, progress=False)
    run = train_ranking(config, retrieval, progress=False)
    lists = [lists for name, lists in run.data.test if name != NEW_ITEM]
    together = CandidateLists(concat_examples([x.examples for x in lists]), np.concatenate([x.query for x in lists]),
                              np.concatenate([x.candidates for x in lists]),
                              np.concatenate([x.retrieval_scores for x in lists]))

    def ndcg(scores):
        return ranking_metrics(list_ranks(together, scores), (10,))["ndcg@10"]

    base = ndcg(together.retrieval_scores)
    teacher = ndcg(score_lists(run.teacher, together))
    student = ndcg(score_lists(run.student, together))
    n, width = together.candidates.shape
    note = f"{n} warm + cold-start test lists of {width} candidates"
    results.add("NDCG@10, retrieval order", base, "", note=note)
    results.add("NDCG@10, re-ranked by the ranker", teacher, "", note=note)
    results.add("NDCG@10, re-ranked by the distilled student", student, "", note=note)
    results.add("ranker / retrieval order NDCG@10", teacher / base, "x", ">= 1.0")
    results.add("student / ranker NDCG@10", student / teacher, "x", ">= 0.95")
    teacher_s = scoring_seconds(run.teacher, together)
    student_s = scoring_seconds(run.student, together)
    results.add("ranker scoring", n * width / teacher_s, "candidates/s")
    results.add("student scoring", n * width / student_s, "candidates/s")
    results.add("student / ranker scoring time", student_s / teacher_s, "x", "<= 0.25")
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
