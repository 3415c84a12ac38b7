"""``crossrec candidates``: top-K candidates for a whole user table, on Apache Beam."""

from __future__ import annotations

import argparse

from crossrec.cli.flags import add_feed_weight_flags, feed_weights


def cmd_candidates(args: argparse.Namespace) -> int:
    from serving.batch import BatchRequest, run_candidates
    from serving.batch_feed import FeedRequest

    pipeline_args = list(args.pipeline_args)
    weights = feed_weights(args)
    feed = FeedRequest(args.feed, **weights) if args.feed else None
    if args.runner:
        pipeline_args.append(f"--runner={args.runner}")
    domains = [d.strip() for d in args.domains.split(",")] if args.domains else None
    request = BatchRequest(args.input, args.interactions, args.k, args.rank_top, domains, not args.keep_seen, feed)
    result = run_candidates(args.model_dir, args.output, request, batch_size=args.batch_size,
                            pipeline_args=pipeline_args)
    c = result.counts
    asked = "users' feeds" if feed else "(user, domain) queries"
    print(f"candidates for {c['users_scored']} {asked} in {result.seconds:.0f} s -> "
          f"{result.output}/candidates-*.parquet")
    cold = "" if feed else f"cross-domain cold start (no history in the domain): {c['cold_start_users']}; "
    print(f"  {cold}unknown to the model (no known history item): {c['unknown_users']}; dead letters: "
          f"{c['dead_letters']}"
          + (f" -> {result.output}/dead_letter-*.parquet" if c["dead_letters"] else ""))
    return 0


def register(commands) -> None:
    candidates = commands.add_parser(
        "candidates", help="top-K candidates for every user of a table, on Apache Beam",
        description="An Apache Beam pipeline (Beam's local FnApiRunner here, one thread per core; Dataflow, "
                    "Flink or Spark with their pipeline options, which pass through) that runs the exported "
                    "retrieval model (and with --rank-top the recommender model: merged sources, ranked) over "
                    "every user and writes Parquet shards: user_id, domain, rank, item_id, score, model_name, "
                    "model_version. Bad rows go to dead_letter-*.parquet with the reason. Every query ends as "
                    "one list or a dead letter: the job checks its counts against the files and fails if they "
                    "do not add up.",
        epilog="Input: --input users.parquet (user_id, history_item_ids, history_domains lists oldest first, "
               "optional domain) or --interactions interactions.parquet (histories built per user). "
               "Unrecognised options are Beam pipeline options, e.g. --runner=DataflowRunner --project=P "
               "--region=R --temp_location=gs://B/tmp")
    source = candidates.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="users table (Parquet; a glob or gs:// path works on other runners)")
    source.add_argument("--interactions", help="interactions table (Parquet, canonical schema)")
    candidates.add_argument("--model-dir", "--model_base_path", dest="model_dir", default="saved_models",
                            help="exported models (default saved_models; --model_base_path as for crossrec serve)")
    candidates.add_argument("--output", required=True, help="output folder")
    candidates.add_argument("--k", type=int, default=100, help="candidates per user and domain (default 100)")
    candidates.add_argument("--rank-top", type=int, default=0, help="head each list with the recommender model's top N")
    candidates.add_argument("--domains", help="comma-separated domains to recommend from, for rows without a "
                                              "domain column (default: every domain of the model)")
    candidates.add_argument("--feed", type=int, default=0, metavar="N",
                            help="one feed of N items across every domain per user (the recommender's feed "
                                 "signature; each row's domain is the item's) instead of lists per domain")
    add_feed_weight_flags(candidates)
    candidates.add_argument("--keep-seen", action="store_true", help="allow items the user already has")
    candidates.add_argument("--batch-size", type=int, default=1024, help="users per model call (default 1024)")
    candidates.add_argument("--runner", help="Beam runner (default: the local FnApiRunner, one thread per core; "
                                             "DirectRunner would first try to download Prism)")
    candidates.set_defaults(func=cmd_candidates, pipeline_args=[])
