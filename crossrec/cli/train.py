"""``crossrec train``: the retrieval towers and the rankers, each by its Keras fit script."""

from __future__ import annotations

import argparse
from dataclasses import replace

from crossrec.cli.flags import (
    add_source_flags,
    add_training_flags,
    apply_overrides,
    config_from_args,
)
from crossrec.errors import ConfigError


def cmd_train_retrieval(args: argparse.Namespace) -> int:
    from towers.train import train_retrieval

    config = apply_overrides(config_from_args(args), args)
    run = train_retrieval(config, args.out, progress=not args.quiet, baselines=True)
    print(f"\ntrained on {len(run.data.examples)} examples in {run.seconds:.0f} s; outputs in {args.out}/")
    if run.metrics.empty:
        print("no test queries to evaluate: the split held out no interaction (a user needs at least three "
              "interactions for split.kind leave_last_out to hold one out for validation and one for test)")
        return 0
    overall = run.metrics[run.metrics["domain"] == "all"].set_index(["slice", "model"])
    print(overall[["queries", "recall@10", "recall@50", "ndcg@10", "mrr"]].round(4).to_string())
    return 0


def cmd_train_ranking(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crossrec.report import ndcg_table
    from ranking.train import train_ranking

    if args.config is None and not any(getattr(args, f) for f in ("data", "items", "format", "amazon")):
        args.config = str(Path(args.retrieval) / "config.yaml")  # the towers' own data and split
        if not Path(args.config).exists():
            raise ConfigError(f"{args.retrieval} holds no trained towers (config.yaml); run `crossrec train "
                              "retrieval --out DIR` first and pass that DIR as --retrieval")
    config = config_from_args(args)
    if args.epochs is not None:
        config = replace(config, ranking=replace(config.ranking, epochs=args.epochs))
    run = train_ranking(config, args.retrieval, args.out, progress=not args.quiet)
    print(f"\nrankers trained in {sum(run.seconds.values()):.0f} s ({run.seconds}); outputs in {args.out}/")
    print("NDCG@10 of the same merged candidates: the towers' order vs re-ranked vs served")
    print(ndcg_table(run.metrics).round(4).to_string())
    from ranking.evaluate import source_recall

    recall = source_recall(run.data.test, run.data.catalogue)
    if not recall.empty:
        print("\nshare of test targets in each source's list (mean list length)")
        table = recall[recall["domain"] == "all"].pivot(index="slice", columns="source", values="recall")
        print(table.round(3).to_string())
    return 0


def register(commands) -> None:
    train = commands.add_parser("train", help="train a model (retrieval towers, ranking)",
                                description="Train a model with a Keras fit script.")
    train_commands = train.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    retrieval = train_commands.add_parser(
        "retrieval", help="train the text-encoder item towers and the shared user tower",
        description="Train the retrieval towers (TFRS in-batch softmax) on the configured data, evaluate them "
                    "on the held-out slices (warm, cross-domain cold start, new items) against popularity, and "
                    "write weights, the item embedding table, checkpoints, TensorBoard logs and run_summary.json.")
    add_source_flags(retrieval)
    add_training_flags(retrieval)
    retrieval.add_argument("--out", required=True, help="output folder")
    retrieval.set_defaults(func=cmd_train_retrieval)

    ranking = train_commands.add_parser(
        "ranking", help="train the ranker (DCN-v2, multi-task) and its distilled student on retrieved candidates",
        description="Mine each training query's top-K candidates with trained retrieval towers, train the "
                    "ranking model on them (feature crosses, engagement + rating heads) and a small student "
                    "distilled from it, and compare retrieval order, ranker and student on the test lists. "
                    "Without --config or data flags, the towers' own config (data and split) is used.")
    add_source_flags(ranking)
    ranking.add_argument("--retrieval", required=True, help="folder written by `crossrec train retrieval --out`")
    ranking.add_argument("--out", required=True, help="output folder")
    ranking.add_argument("--epochs", type=int, help="maximum epochs per ranker (early stopping may end sooner)")
    ranking.add_argument("--quiet", action="store_true", help="no progress bars")
    ranking.set_defaults(func=cmd_train_ranking)
