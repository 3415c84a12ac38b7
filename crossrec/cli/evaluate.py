"""``crossrec evaluate``: train crossrec and its baselines on one split and compare them."""

from __future__ import annotations

import argparse

from crossrec.cli.flags import (
    add_source_flags,
    add_training_flags,
    apply_overrides,
    config_from_args,
)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from crossrec import api
    from crossrec.report import ndcg_table

    config = apply_overrides(config_from_args(args), args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = api.evaluate(config, args.out, models=models, seeds=args.seeds, zero_shot_domain=args.zero_shot_domain,
                          towers_out=args.model_out, rankers_out=args.ranking_out, progress=not args.quiet)
    print(f"\nsummary (report: {result.report}):")
    for line in result.summary():
        print(f"  {line}")
    where = "" if args.per_domain else ", all domains (per domain: the report, or --per-domain)"
    print(f"\nNDCG@10{where}")
    print(_console(ndcg_table(result.metrics), args.per_domain))
    if result.comparison.reranking is not None:
        print(f"\nNDCG@10 of the same retrieved candidates: retrieval order vs re-ranked{where}")
        print(_console(ndcg_table(result.comparison.reranking), args.per_domain))
    return 0


def _console(table, per_domain: bool) -> str:
    from crossrec.api import all_domains

    return all_domains(table, per_domain).round(4).to_string(na_rep="")


def register(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="compare crossrec with baselines; write a Markdown/JSON/PNG report",
        description="Train crossrec and its baselines on one split and rank the full corpus of each target "
                    "domain for every held-out interaction. Writes report.md (each cell with its 95% bootstrap "
                    "interval; the served list and crossrec's towers against each model on the same queries), metrics.json, metrics.csv, "
                    "paired.csv, ranks.parquet (every query's rank) and PNG plots to --out.")
    add_source_flags(evaluate)
    add_training_flags(evaluate)
    evaluate.add_argument("--out", required=True, help="report folder")
    evaluate.add_argument("--models", default="crossrec,popularity,id_two_tower,target_only,ranking",
                          help="comma-separated, from crossrec (the towers alone), popularity, id_two_tower, "
                               "target_only, item_knn, sasrec, ranking (trains the ranker on crossrec's candidates and adds "
                               "the served row: the recommender's answer; default: all but item_knn and sasrec)")
    evaluate.add_argument("--zero-shot-domain", help="also retrain without any interaction of this domain and ask "
                                                     "it the cold-start queries of that domain (the zero_shot "
                                                     "slice; the domain is then the cold-start domain unless "
                                                     "split.target_domain says otherwise)")
    evaluate.add_argument("--per-domain", action="store_true", help="print every domain's row, not only the "
                                                                    "slices over all domains (the report has both)")
    evaluate.add_argument("--seeds", type=int, help="train every model this many times (train.seed, +1, ...) "
                                                    "and pool each query's metric over them (default eval.seeds, 1)")
    evaluate.add_argument("--model-out", help="also keep the trained crossrec towers in this folder "
                                              "(as `crossrec train retrieval --out` writes them)")
    evaluate.add_argument("--ranking-out", help="also keep the trained rankers in this folder "
                                                "(as `crossrec train ranking --out` writes them)")
    evaluate.set_defaults(func=cmd_evaluate)
