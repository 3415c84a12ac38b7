"""The ``crossrec`` command: one entry point, one subcommand per job.

Each subcommand parses its flags and calls a plain function; errors in the user's input
(``CrossrecInputError``) are printed without a traceback and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace

import crossrec  # noqa: F401  (sets up the TF/Keras environment first)
from crossrec.config import Config, load_config
from crossrec.errors import ConfigError, CrossrecInputError

EXIT_INPUT_ERROR = 2
EXIT_NOT_PUBLISHED = 3  # `crossrec retrain`: the gate kept the served version

DESCRIPTION = """\
crossrec: a cross-domain recommender (text-encoder item towers, a shared user tower,
TFRS retrieval and ranking, TF Serving-compatible exports).

Start with the built-in data:
  crossrec quickstart                         the main job end to end, each step's command printed
  crossrec data synth --out data/            generate the built-in multi-domain dataset
  crossrec data describe --data data/        sizes, overlap between domains, history lengths
  crossrec data validate --data data/        check a dataset (exit 2 with file/row/column on errors)
  crossrec data split --data data/ --out split/ --kind cold_start --target-domain movies

Run `crossrec <command> --help` for each command's options.
"""


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "data source", "Where the data comes from. Flags override the config file's `data:` section; "
                       "with neither, the built-in synthetic data is used.")
    group.add_argument("--config", help="YAML config file (see README: configuration reference)")
    group.add_argument("--data", metavar="PATH",
                       help="interactions file (.parquet/.csv/.csv.gz/.jsonl), a folder with interactions.* and "
                            "items.* (as `data synth` writes), or a MovieLens folder with --format movielens")
    group.add_argument("--items", metavar="FILE", help="items file (not needed when --data is a folder)")
    group.add_argument("--users", metavar="FILE", help="optional users file")
    group.add_argument("--format", choices=["table", "movielens", "amazon"],
                       help="source format (default: table)")
    group.add_argument("--column", action="append", default=[], metavar="CANONICAL=SOURCE",
                       help="take a canonical column from a differently named one, e.g. --column user_id=userId "
                            "(repeatable)")
    group.add_argument("--text-template", metavar="TEMPLATE",
                       help='how item text is built from item columns, e.g. "{title}. {categories}"')
    group.add_argument("--unknown-items", choices=["error", "drop"],
                       help="interactions with items missing from the items table: fail (default) or drop and count")
    group.add_argument("--amazon", action="append", default=[], metavar="DOMAIN=REVIEWS,META",
                       help="an Amazon Reviews JSON Lines pair for one domain (repeatable)")
    group.add_argument("--movielens-domain", choices=["movies", "genre"],
                       help="MovieLens: one domain 'movies' (default), or each movie's first genre as its domain")


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training", "Override the config file's train/encoder settings.")
    group.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    group.add_argument("--batch-size", type=int, help="examples per batch")
    group.add_argument("--preset", help="text encoder preset folder (default: all-MiniLM-L6-v2)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def _config_from_args(args: argparse.Namespace) -> Config:
    from crossrec.data.loaders import parse_amazon_flag

    config = load_config(args.config)
    data = config.data
    columns = dict(data.columns)
    for value in args.column:
        target, sep, source = value.partition("=")
        if not sep or not target or not source:
            raise ConfigError(f"--column {value!r}: expected CANONICAL=SOURCE, e.g. --column user_id=userId")
        columns[target] = source
    updates = {"columns": columns}
    for flag, key in [("data", "interactions"), ("items", "items"), ("users", "users"), ("format", "format"),
                      ("text_template", "text_template"), ("unknown_items", "unknown_items"),
                      ("movielens_domain", "movielens_domain")]:
        value = getattr(args, flag)
        if value is not None:
            updates[key] = value
    if args.amazon:
        updates["amazon_files"] = parse_amazon_flag(args.amazon)
        updates["format"] = "amazon"
    return replace(config, data=replace(data, **updates))


def _load(args: argparse.Namespace):
    from crossrec.data.loaders import load_dataset

    config = _config_from_args(args)
    return config, load_dataset(config.data)


# --- data -----------------------------------------------------------------------------------------

def cmd_data_synth(args: argparse.Namespace) -> int:
    from crossrec.data.synth import generate

    config = load_config(args.config).data.synth
    updates = {k: v for k, v in [("n_users", args.n_users), ("n_items", args.n_items),
                                 ("n_interactions", args.n_interactions), ("seed", args.seed)] if v is not None}
    if args.domains:
        updates["domains"] = [d.strip() for d in args.domains.split(",") if d.strip()]
    config = replace(config, **updates)
    try:
        dataset = generate(config, progress=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        out = dataset.save(args.out, file_format=args.file_format, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise ConfigError(str(exc)) from None
    print(f"wrote {len(dataset.interactions)} interactions, {len(dataset.items)} items in "
          f"{len(config.domains)} domains ({', '.join(config.domains)}) to {out}/")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    _, dataset = _load(args)
    inter = dataset.interactions
    print(f"OK: {len(inter)} interactions from {inter['user_id'].nunique()} users, "
          f"{len(dataset.items)} items in {len(dataset.domains)} domains ({', '.join(dataset.domains)})"
          + (f", {len(dataset.users)} users in the users table" if dataset.users is not None else ""))
    for note in dataset.report.notes:
        print(f"note: {note}")
    return 0


def cmd_data_describe(args: argparse.Namespace) -> int:
    from crossrec.data.describe import describe, render

    _, dataset = _load(args)
    tables = describe(dataset)
    if args.json:
        print(json.dumps({k: json.loads(v.to_json(orient="index")) for k, v in tables.items()}, indent=2))
    else:
        print(render(tables))
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from crossrec.data.dataset import Dataset
    from crossrec.data.splits import split, split_counts

    config, dataset = _load(args)
    updates = {k: v for k, v in [("kind", args.kind), ("target_domain", args.target_domain),
                                 ("holdout_fraction", args.fraction), ("seed", args.seed)] if v is not None}
    split_config = replace(config.split, **updates)
    dataset = dataset.clean()
    if "split" in dataset.interactions.columns:
        print("note: the input's own 'split' column is replaced (crossrec evaluate can still use a dataset's "
              "given split)")
    inter = split(dataset.interactions, split_config)
    out = Dataset(inter, dataset.items, dataset.users)
    try:
        out.save(args.out, file_format=args.file_format, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise ConfigError(str(exc)) from None
    print(f"{split_config.kind} split written to {args.out}/")
    print(split_counts(inter).to_string())
    return 0


# --- train / evaluate -------------------------------------------------------------------------------

def _apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    train = config.train
    if getattr(args, "epochs", None) is not None:
        train = replace(train, epochs=args.epochs)
    if getattr(args, "batch_size", None) is not None:
        train = replace(train, batch_size=args.batch_size)
    encoder = config.encoder
    if getattr(args, "preset", None):
        encoder = replace(encoder, preset=args.preset)
    return replace(config, train=train, encoder=encoder)


def cmd_train_retrieval(args: argparse.Namespace) -> int:
    from towers.train import train_retrieval

    config = _apply_overrides(_config_from_args(args), args)
    run = train_retrieval(config, args.out, progress=not args.quiet, baselines=True)
    overall = run.metrics[run.metrics["domain"] == "all"].set_index(["slice", "model"])
    print(f"\ntrained on {len(run.data.examples)} examples in {run.seconds:.0f} s; outputs in {args.out}/")
    print(overall[["queries", "recall@10", "recall@50", "ndcg@10", "mrr"]].round(4).to_string())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from crossrec.report import ndcg_table, write_report
    from towers.compare import compare_models

    config = _apply_overrides(_config_from_args(args), args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = compare_models(config, models=models, zero_shot_domain=args.zero_shot_domain,
                            progress=not args.quiet, model_out=args.model_out, ranking_out=args.ranking_out)
    notes = [f"data: {config.data.interactions or 'built-in synthetic data'}",
             f"cross-domain cold-start target domain: {result.target_domain}",
             "full-corpus ranking per target domain" + (", seen items excluded" if config.eval.exclude_seen else ""),
             "seconds per model: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items())]
    path = write_report(result.metrics, args.out, title="crossrec evaluation", notes=notes,
                        histories=result.histories, extra={"seconds": result.seconds}, reranking=result.reranking)
    print(f"\nNDCG@10 (report: {path})")
    print(ndcg_table(result.metrics).round(4).to_string())
    if result.reranking is not None:
        print("\nNDCG@10 of the same retrieved candidates: retrieval order vs re-ranked")
        print(ndcg_table(result.reranking).round(4).to_string())
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
    config = _config_from_args(args)
    if args.epochs is not None:
        config = replace(config, ranking=replace(config.ranking, epochs=args.epochs))
    run = train_ranking(config, args.retrieval, args.out, progress=not args.quiet)
    print(f"\nrankers trained in {sum(run.seconds.values()):.0f} s ({run.seconds}); outputs in {args.out}/")
    print("NDCG@10 of the same retrieved candidates: retrieval order vs re-ranked")
    print(ndcg_table(run.metrics).round(4).to_string())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from serving.export import export_models, load_parts, sample_queries, write_model_config

    config = load_config(args.config) if args.config else None
    parts = load_parts(args.retrieval, None, config)
    config = parts.config
    updates = {k: v for k, v in [("index", args.index), ("max_k", args.max_k)] if v is not None}
    config = replace(config, export=replace(config.export, **updates))
    queries = sample_queries(replace(parts, config=config), config.export.recall_queries)
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    result = export_models(args.retrieval, args.out, ranking_dir=args.ranking, config=config, models=models,
                           version=args.version, recall_queries=queries, progress=not args.quiet)
    config_file = write_model_config(args.out)
    for name, path in result.paths.items():
        index = result.metadata[name].get("index") or {}
        recall = f", index recall@10 {index['recall@10']:.3f} vs exact" if "recall@10" in index else ""
        print(f"{name}: version {result.versions[name]} -> {path}{recall}")
    print(f"exported in {result.seconds:.0f} s; TF Serving model config: {config_file}")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    import signal

    from crossrec.retrain import retrain, served_state, with_overrides

    config = load_config(args.config or served_state(args.base).towers_dir / "config.yaml")
    config = with_overrides(config, epochs=args.epochs, max_regression=args.max_regression)

    def stop(signum, frame):  # SIGTERM: stop like Ctrl-C; the run folder keeps every finished stage
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        result = retrain(args.data, args.base, config=config, items=args.items, work_dir=args.work_dir,
                         progress=not args.quiet)
    except KeyboardInterrupt:
        print("crossrec: interrupted; nothing half-written was published. Run the same command again to "
              "resume", file=sys.stderr)
        return 130
    print(json.dumps({"published": result.published, "gate": result.gate, "run_folder": str(result.work_dir)}))
    return 0 if result.published is not None else EXIT_NOT_PUBLISHED


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.all import main as bench_main

    flags = (["--quick"] if args.quick else []) + (["--only", args.only] if args.only else []) + \
        (["--preset", args.preset] if args.preset else []) + \
        (["--results-dir", args.results_dir] if args.results_dir else [])
    return bench_main(flags)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    import tensorflow as tf

    from serving.models import ModelManager, wait_until_ready
    from serving.server import Server, ServerOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # before any model loads: TF's thread pools are fixed once they start
    tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    manager = ModelManager(_serving_specs(args))
    options = ServerOptions(host=args.host, port=args.port, rest_api_port=args.rest_api_port,
                            poll_seconds=args.file_system_poll_wait_seconds, max_request_bytes=args.max_request_bytes,
                            ssl_cert_file=args.ssl_cert_file, ssl_key_file=args.ssl_key_file)
    server = Server(manager, options).start()
    if not wait_until_ready(manager, timeout=args.load_timeout):
        print("warning: some models have no loadable version yet (see the log); serving the others",
              file=sys.stderr)
    print(f"serving {', '.join(manager.specs)}: gRPC {args.host}:{server.port}"
          + (f", REST http://{args.host}:{server.rest_port}" if server.rest_port else "") + " (Ctrl-C stops)",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _serving_specs(args: argparse.Namespace):
    from pathlib import Path

    from serving.layout import versions
    from serving.models import ModelSpec, specs_from_config_file

    if args.model_config_file:
        return specs_from_config_file(args.model_config_file)
    if not args.model_base_path:
        raise ConfigError("give --model_base_path (a model's folder, or a saved_models folder holding several) "
                          "or --model_config_file")
    base = Path(args.model_base_path).resolve()
    if not base.is_dir():
        raise ConfigError(f"--model_base_path {base}: no such folder (export models with `crossrec export` first)")
    if args.model_name or versions(base):
        return [ModelSpec(args.model_name or base.name, base)]
    models = sorted(p for p in base.iterdir() if p.is_dir() and versions(p))
    if not models:
        raise ConfigError(f"--model_base_path {base}: holds no model versions (<model>/<version>/saved_model.pb)")
    return [ModelSpec(p.name, p) for p in models]


def cmd_candidates(args: argparse.Namespace) -> int:
    from serving.batch import run_candidates

    pipeline_args = list(args.pipeline_args)
    if args.runner:
        pipeline_args.append(f"--runner={args.runner}")
    domains = [d.strip() for d in args.domains.split(",")] if args.domains else None
    result = run_candidates(args.model_dir, args.output, users=args.input, interactions=args.interactions, k=args.k,
                            rank_top=args.rank_top, domains=domains, exclude_seen=not args.keep_seen,
                            batch_size=args.batch_size, pipeline_args=pipeline_args)
    c = result.counts
    print(f"candidates for {c['users_scored']} (user, domain) queries in {result.seconds:.0f} s -> "
          f"{result.output}/candidates-*.parquet")
    print(f"  cross-domain cold start (no history in the domain): {c['cold_start_users']}; unknown to the model "
          f"(no known history item): {c['unknown_users']}; dead letters: {c['dead_letters']}"
          + (f" -> {result.output}/dead_letter-*.parquet" if c["dead_letters"] else ""))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import grpc

    from serving.client import CrossrecClient

    history = []
    for value in args.history:
        domain, sep, item = value.partition(":")
        if not sep or not domain or not item:
            raise ConfigError(f"--history {value!r}: expected DOMAIN:ITEM_ID, e.g. --history books:BO00012")
        history.append((domain, item))
    with CrossrecClient(args.server, timeout=args.timeout) as client:
        try:
            if args.model == "retrieval":
                rows = client.retrieve(history, args.domain, args.k, exclude_history=not args.keep_seen)
            else:
                rows = client.recommend(history, args.domain, args.k, exclude_history=not args.keep_seen,
                                        model=args.model)
        except grpc.RpcError as error:
            raise ConfigError(f"{args.server}: {error.code().name}: {error.details()}") from None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for rank, row in enumerate(rows, 1):
        print(f"{rank:3d}. {row['item_id']:<24} score {row['score']:.4f}")
    return 0


# --- quickstart -------------------------------------------------------------------------------------

def cmd_quickstart(args: argparse.Namespace) -> int:
    """The main job on the built-in data: generate, validate, describe and split it; train the
    retrieval towers and the rankers and compare them with the baselines; export every model;
    serve them and ask for three users over gRPC; write candidates for every user on Beam."""
    from pathlib import Path

    from crossrec.quickstart import serve_and_query

    out = Path(args.out)
    data_dir = out / "data"
    split_dir = out / "split"
    saved_models = out / "saved_models"
    synth = ["data", "synth", "--out", str(data_dir), "--overwrite", "--seed", str(args.seed)]
    if args.tiny:
        synth += ["--n-users", "150", "--n-items", "240", "--n-interactions", "3000"]
    quick = ["--epochs", "2", "--quiet"] if args.tiny else []
    steps = [
        ("generate the built-in data", synth),
        ("validate it", ["data", "validate", "--data", str(data_dir)]),
        ("describe it", ["data", "describe", "--data", str(data_dir)]),
        ("split it: cross-domain cold start on movies", [
            "data", "split", "--data", str(data_dir), "--out", str(split_dir), "--overwrite",
            "--kind", "cold_start", "--target-domain", "movies", "--seed", str(args.seed)]),
        ("train the retrieval towers (frozen MiniLM, cached) and the rankers; compare with the baselines", [
            "evaluate", "--data", str(data_dir), "--out", str(out / "report"), "--model-out", str(out / "retrieval"),
            "--ranking-out", str(out / "ranking"), "--zero-shot-domain", "kitchen", *quick]),
        ("export every model in TF Serving's layout", [
            "export", "--retrieval", str(out / "retrieval"), "--ranking", str(out / "ranking"),
            "--out", str(saved_models), "--quiet"]),
        ("serve them on loopback and ask for three users over gRPC", None),
        ("candidates for every user, on Apache Beam", [
            "candidates", "--model-dir", str(saved_models), "--interactions", str(data_dir / "interactions.parquet"),
            "--domains", "movies", "--output", str(out / "candidates"), "--k", "20", "--rank-top", "5"]),
    ]
    for number, (title, argv) in enumerate(steps, 1):
        if argv is None:
            print(f"\n[{number}/{len(steps)}] {title}", flush=True)
            serve_and_query(saved_models, data_dir, out / "retrieval")
            continue
        print(f"\n[{number}/{len(steps)}] {title}: crossrec {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            return code
    print(f"\nquickstart done: outputs in {out}/ (report: {out / 'report' / 'report.md'})")
    print(f"next week's data: crossrec retrain --data NEW_DATA/ --from {saved_models}  (see README: Retraining)")
    return 0


# --- parser -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossrec", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"crossrec {crossrec.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = commands.add_parser("data", help="generate, check, describe and split datasets",
                               description="Generate, check, describe and split datasets.")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = data_commands.add_parser(
        "synth", help="write the built-in synthetic multi-domain dataset",
        description="Write the built-in multi-domain dataset (items with English titles grouped in shared "
                    "themes across domains; users whose tastes carry across domains). Deterministic for a seed.")
    synth.add_argument("--out", required=True, help="output folder (gets interactions.* and items.*)")
    synth.add_argument("--config", help="YAML config; its data.synth section sets the defaults")
    synth.add_argument("--n-users", type=int, help="number of users (default 2000)")
    synth.add_argument("--n-items", type=int, help="number of items over all domains (default 3000)")
    synth.add_argument("--n-interactions", type=int, help="about this many interactions (default 60000)")
    synth.add_argument("--domains", help="comma-separated domain names (default books,movies,kitchen)")
    synth.add_argument("--seed", type=int, help="random seed (default 0)")
    synth.add_argument("--file-format", choices=["parquet", "csv", "csv.gz"], default="parquet")
    synth.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    synth.set_defaults(func=cmd_data_synth)

    validate = data_commands.add_parser(
        "validate", help="check a dataset; exit 2 naming file, row and column of each problem",
        description="Load and check a dataset against crossrec's schema. Prints a summary and exits 0 if it "
                    "is usable; otherwise lists every problem with its file, row, column and fix, and exits 2.")
    _add_source_flags(validate)
    validate.set_defaults(func=cmd_data_validate)

    describe = data_commands.add_parser(
        "describe", help="users/items/interactions per domain, overlap, history lengths",
        description="Print users, items and interactions per domain, the users shared between domains, "
                    "and history lengths.")
    _add_source_flags(describe)
    describe.add_argument("--json", action="store_true", help="print JSON instead of tables")
    describe.set_defaults(func=cmd_data_describe)

    split = data_commands.add_parser(
        "split", help="add a train/validation/test split column and write the dataset",
        description="Split interactions into train / validation / test and write the dataset with a 'split' "
                    "column. Kinds: leave_last_out (per user and domain), cold_start (some users lose all of "
                    "one domain), new_item (some items never appear in training).")
    _add_source_flags(split)
    split.add_argument("--out", required=True, help="output folder")
    split.add_argument("--kind", choices=["leave_last_out", "cold_start", "new_item"],
                       help="split kind (default: leave_last_out, or split.kind from the config)")
    split.add_argument("--target-domain", help="cold_start: the domain held out for some users")
    split.add_argument("--fraction", type=float,
                       help="cold_start: share of eligible users held out; new_item: share of items (default 0.2)")
    split.add_argument("--seed", type=int, help="random seed (default 0)")
    split.add_argument("--file-format", choices=["parquet", "csv", "csv.gz"], default="parquet")
    split.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    split.set_defaults(func=cmd_data_split)

    train = commands.add_parser("train", help="train a model (retrieval towers, ranking)",
                                description="Train a model with a Keras fit script.")
    train_commands = train.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    retrieval = train_commands.add_parser(
        "retrieval", help="train the text-encoder item towers and the shared user tower",
        description="Train the retrieval towers (TFRS in-batch softmax) on the configured data, evaluate them "
                    "on the held-out slices (warm, cross-domain cold start, new items) against popularity, and "
                    "write weights, the item embedding table, checkpoints, TensorBoard logs and run_summary.json.")
    _add_source_flags(retrieval)
    _add_training_flags(retrieval)
    retrieval.add_argument("--out", required=True, help="output folder")
    retrieval.set_defaults(func=cmd_train_retrieval)

    ranking = train_commands.add_parser(
        "ranking", help="train the ranker (DCN-v2, multi-task) and its distilled student on retrieved candidates",
        description="Mine each training query's top-K candidates with trained retrieval towers, train the "
                    "ranking model on them (feature crosses, engagement + rating heads) and a small student "
                    "distilled from it, and compare retrieval order, ranker and student on the test lists. "
                    "Without --config or data flags, the towers' own config (data and split) is used.")
    _add_source_flags(ranking)
    ranking.add_argument("--retrieval", required=True, help="folder written by `crossrec train retrieval --out`")
    ranking.add_argument("--out", required=True, help="output folder")
    ranking.add_argument("--epochs", type=int, help="maximum epochs per ranker (early stopping may end sooner)")
    ranking.add_argument("--quiet", action="store_true", help="no progress bars")
    ranking.set_defaults(func=cmd_train_ranking)

    export = commands.add_parser(
        "export", help="write versioned SavedModels in TF Serving's layout (retrieval, ranking, ...)",
        description="Export the trained towers and rankers as SavedModels under OUT/<model>/<version>/ "
                    "(TF Serving's layout; the next free version unless --version): retrieval (with a "
                    "brute-force or ScaNN index), ranking, recommender (retrieve -> rank in one call) and "
                    "item_encoder (text -> embedding). Each version is written aside and renamed into place. "
                    "Also writes OUT/models.config for tensorflow/serving's --model_config_file.")
    export.add_argument("--retrieval", required=True, help="folder written by `crossrec train retrieval --out`")
    export.add_argument("--ranking", help="folder written by `crossrec train ranking --out` (needed for the "
                                          "ranking and recommender models)")
    export.add_argument("--out", default="saved_models", help="base folder (default saved_models)")
    export.add_argument("--config", help="YAML config whose export: section to use (default: the towers' config)")
    export.add_argument("--index", choices=["brute_force", "scann"], help="top-k index (default brute_force)")
    export.add_argument("--max-k", type=int, help="the largest k a request may ask for (default 100)")
    export.add_argument("--models", help="comma-separated subset of retrieval,ranking,recommender,item_encoder "
                                         "(default: all four with --ranking, else retrieval,item_encoder)")
    export.add_argument("--version", type=int, help="version number to write (default: the next free one)")
    export.add_argument("--quiet", action="store_true", help="no progress output")
    export.set_defaults(func=cmd_export)

    serve = commands.add_parser(
        "serve", help="serve saved_models/ over TF Serving's gRPC and REST APIs",
        description="An embedded server speaking TensorFlow Serving's gRPC (PredictionService, ModelService, "
                    "health, reflection) and REST APIs, for machines without tensorflow_model_server. Flags "
                    "are named like tensorflow_model_server's. Serves the latest version of each model and "
                    "switches to new versions as they appear, without failing requests in flight.")
    serve.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    serve.add_argument("--rest_api_port", type=int, default=8501, help="REST port (default 8501; 0 = no REST)")
    serve.add_argument("--model_base_path", help="a model's folder (<base>/<version>/), or a folder of model "
                                                 "folders such as saved_models/ (serves each)")
    serve.add_argument("--model_name", help="the model's name (default: the folder's name)")
    serve.add_argument("--model_config_file", help="TF Serving ModelServerConfig text proto (several models, "
                                                   "version policies and labels)")
    serve.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                       help="how often to look for new versions (default 1; 0 = load once)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--max_request_bytes", type=int, default=16 * 1024 * 1024,
                       help="largest accepted request (default 16 MiB)")
    serve.add_argument("--ssl_cert_file", help="PEM certificate: serve gRPC and REST over TLS")
    serve.add_argument("--ssl_key_file", help="PEM private key for --ssl_cert_file")
    serve.add_argument("--load_timeout", type=float, default=120.0, help="seconds to wait for the first load")
    serve.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                       help="threads one op may use (default 0: TensorFlow's choice)")
    serve.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                       help="ops run at once per request (default 0: TensorFlow's choice)")
    serve.set_defaults(func=cmd_serve)

    candidates = commands.add_parser(
        "candidates", help="top-K candidates for every user of a table, on Apache Beam",
        description="An Apache Beam pipeline (DirectRunner here; Dataflow, Flink or Spark with their pipeline "
                    "options, which pass through) that runs the exported retrieval model (and with --rank-top "
                    "the ranking model) over every user and writes Parquet shards: user_id, domain, rank, "
                    "item_id, score, model_name, model_version. Bad rows go to dead_letter-*.parquet with the "
                    "reason.",
        epilog="Input: --input users.parquet (user_id, history_item_ids, history_domains lists oldest first, "
               "optional domain) or --interactions interactions.parquet (histories built per user). "
               "Unrecognised options are Beam pipeline options, e.g. --runner=DataflowRunner --project=P "
               "--region=R --temp_location=gs://B/tmp")
    source = candidates.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="users table (Parquet; a glob or gs:// path works on other runners)")
    source.add_argument("--interactions", help="interactions table (Parquet, canonical schema)")
    candidates.add_argument("--model-dir", default="saved_models", help="exported models (default saved_models)")
    candidates.add_argument("--output", required=True, help="output folder")
    candidates.add_argument("--k", type=int, default=100, help="candidates per user and domain (default 100)")
    candidates.add_argument("--rank-top", type=int, default=0, help="re-rank the top N with the ranking model")
    candidates.add_argument("--domains", help="comma-separated domains to recommend from, for rows without a "
                                              "domain column (default: every domain of the model)")
    candidates.add_argument("--keep-seen", action="store_true", help="allow items the user already has")
    candidates.add_argument("--batch-size", type=int, default=1024, help="users per model call (default 1024)")
    candidates.add_argument("--runner", help="Beam runner (default DirectRunner)")
    candidates.set_defaults(func=cmd_candidates, pipeline_args=[])

    query = commands.add_parser(
        "query", help="ask a running server for recommendations (gRPC client)",
        description="Send one user's history to a running server (crossrec serve or tensorflow/serving) and "
                    "print the recommendations.")
    query.add_argument("--server", default="127.0.0.1:8500", help="gRPC address (default 127.0.0.1:8500)")
    query.add_argument("--history", action="append", default=[], metavar="DOMAIN:ITEM_ID",
                       help="one history item, oldest first (repeatable)")
    query.add_argument("--domain", required=True, help="the domain to recommend from")
    query.add_argument("--k", type=int, default=10, help="how many (default 10)")
    query.add_argument("--model", default="recommender", help="recommender (retrieve + rank, default) or retrieval")
    query.add_argument("--keep-seen", action="store_true", help="allow items already in the history")
    query.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.set_defaults(func=cmd_query)

    evaluate = commands.add_parser(
        "evaluate", help="compare crossrec with baselines; write a Markdown/JSON/PNG report",
        description="Train crossrec and its baselines on one split and rank the full corpus of each target "
                    "domain for every held-out interaction. Writes report.md, metrics.json, metrics.csv and "
                    "PNG plots to --out.")
    _add_source_flags(evaluate)
    _add_training_flags(evaluate)
    evaluate.add_argument("--out", required=True, help="report folder")
    evaluate.add_argument("--models", default="crossrec,popularity,id_two_tower,target_only,ranking",
                          help="comma-separated, from crossrec, popularity, id_two_tower, target_only, item_knn, "
                               "ranking (re-ranks crossrec's candidates; default: all but item_knn)")
    evaluate.add_argument("--zero-shot-domain", help="also retrain without any interaction of this domain and "
                                                     "evaluate on it (the zero_shot slice)")
    evaluate.add_argument("--model-out", help="also keep the trained crossrec towers in this folder "
                                              "(as `crossrec train retrieval --out` writes them)")
    evaluate.add_argument("--ranking-out", help="also keep the trained rankers in this folder "
                                                "(as `crossrec train ranking --out` writes them)")
    evaluate.set_defaults(func=cmd_evaluate)

    retrain = commands.add_parser(
        "retrain", help="warm-start from the served version, train on old + new data, publish if not worse",
        description="Retrain from the latest version under --from (its training state travels inside it): "
                    "merge its data with the new data, warm-start the towers and rankers, encode only new or "
                    "changed item texts, and export the next version of every served model, unless the "
                    "retrained towers' validation metric (retrain.metric, default Recall@50) is worse than the "
                    "served version's by more than retrain.max_regression (exit status 3, nothing published). Interrupted runs resume when "
                    "the same command is run again; each run writes run_log.jsonl in its run folder.")
    retrain.add_argument("--data", required=True, metavar="PATH",
                         help="new data: a folder with interactions.* and optional items.* (new or changed "
                              "items; a `removed` column set to true takes an item out), or an interactions file")
    retrain.add_argument("--items", metavar="FILE", help="new items file, when --data is a file")
    retrain.add_argument("--from", dest="base", default="saved_models",
                         help="serving base folder to retrain from and publish to (default saved_models)")
    retrain.add_argument("--config", help="YAML config (default: the served version's own)")
    retrain.add_argument("--work-dir", default=".runs/retrain",
                         help="where run folders live (default .runs/retrain); resuming needs the same one")
    retrain.add_argument("--epochs", type=int, help="maximum epochs for towers and rankers")
    retrain.add_argument("--max-regression", type=float,
                         help="largest allowed relative drop in the gate's validation metric (default 0.02)")
    retrain.add_argument("--quiet", action="store_true", help="no progress bars")
    retrain.set_defaults(func=cmd_retrain)

    bench = commands.add_parser(
        "bench", help="run every benchmark and compare each figure with its target",
        description="Run the towers, ranking, serving, batch and retrain benchmarks (about 13 minutes on 2 "
                    "CPU cores), print one table of every figure against its target, and write "
                    "bench/results/latest.json and latest.md (plus each benchmark's own results).")
    bench.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute each)")
    bench.add_argument("--only", help="comma-separated subset of towers,ranking,serving,batch,retrain")
    bench.add_argument("--preset", help="text encoder preset folder (default: all-MiniLM-L6-v2)")
    bench.add_argument("--results-dir", help="where to write results (default bench/results)")
    bench.set_defaults(func=cmd_bench)

    quickstart = commands.add_parser(
        "quickstart", help="run the main job end to end on the built-in data",
        description="Run the main job end to end on the built-in data, printing each step's command so you "
                    "can run it yourself: generate, validate, describe and split the data, train the retrieval "
                    "towers and the rankers and compare them with the baselines, export every model, serve "
                    "them and query three users over gRPC, and write candidates for every user on Beam.")
    quickstart.add_argument("--out", default=".runs/quickstart", help="output folder (default .runs/quickstart)")
    quickstart.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    quickstart.add_argument("--tiny", action="store_true", help="a very small run (for tests and smoke checks)")
    quickstart.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "pipeline_args", None) != []:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.pipeline_args = extra  # `crossrec candidates`: Beam pipeline options pass through
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CrossrecInputError as exc:
        print(f"crossrec: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("crossrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
