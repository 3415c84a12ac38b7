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
                            progress=not args.quiet, model_out=args.model_out)
    notes = [f"data: {config.data.interactions or 'built-in synthetic data'}",
             f"cross-domain cold-start target domain: {result.target_domain}",
             "full-corpus ranking per target domain" + (", seen items excluded" if config.eval.exclude_seen else ""),
             "seconds per model: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items())]
    path = write_report(result.metrics, args.out, title="crossrec evaluation", notes=notes,
                        histories=result.histories, extra={"seconds": result.seconds})
    print(f"\nNDCG@10 (report: {path})")
    print(ndcg_table(result.metrics).round(4).to_string())
    return 0


# --- quickstart -------------------------------------------------------------------------------------

def cmd_quickstart(args: argparse.Namespace) -> int:
    """The main job on the built-in data: generate, validate, describe and split it, then train
    the retrieval towers and compare them with the baselines. Later stages (ranking, export,
    serving, batch candidates) are added here as they land."""
    from pathlib import Path

    out = Path(args.out)
    data_dir = out / "data"
    split_dir = out / "split"
    synth = ["data", "synth", "--out", str(data_dir), "--overwrite", "--seed", str(args.seed)]
    if args.tiny:
        synth += ["--n-users", "150", "--n-items", "240", "--n-interactions", "3000"]
    steps = [
        ("generate the built-in data", synth),
        ("validate it", ["data", "validate", "--data", str(data_dir)]),
        ("describe it", ["data", "describe", "--data", str(data_dir)]),
        ("split it: cross-domain cold start on movies", [
            "data", "split", "--data", str(data_dir), "--out", str(split_dir), "--overwrite",
            "--kind", "cold_start", "--target-domain", "movies", "--seed", str(args.seed)]),
        ("train the retrieval towers (frozen MiniLM, cached) and compare them with the baselines", [
            "evaluate", "--data", str(data_dir), "--out", str(out / "report"),
            "--model-out", str(out / "retrieval"), "--zero-shot-domain", "kitchen"]
         + (["--epochs", "2", "--quiet"] if args.tiny else [])),
    ]
    for number, (title, argv) in enumerate(steps, 1):
        print(f"\n[{number}/{len(steps)}] {title}: crossrec {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            return code
    print(f"\nquickstart done: outputs in {out}/")
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

    train = commands.add_parser("train", help="train a model (retrieval towers)",
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

    evaluate = commands.add_parser(
        "evaluate", help="compare crossrec with baselines; write a Markdown/JSON/PNG report",
        description="Train crossrec and its baselines on one split and rank the full corpus of each target "
                    "domain for every held-out interaction. Writes report.md, metrics.json, metrics.csv and "
                    "PNG plots to --out.")
    _add_source_flags(evaluate)
    _add_training_flags(evaluate)
    evaluate.add_argument("--out", required=True, help="report folder")
    evaluate.add_argument("--models", default="crossrec,popularity,id_two_tower,target_only",
                          help="comma-separated, from crossrec, popularity, id_two_tower, target_only, item_knn "
                               "(default: all but item_knn)")
    evaluate.add_argument("--zero-shot-domain", help="also retrain without any interaction of this domain and "
                                                     "evaluate on it (the zero_shot slice)")
    evaluate.add_argument("--model-out", help="also keep the trained crossrec towers in this folder "
                                              "(as `crossrec train retrieval --out` writes them)")
    evaluate.set_defaults(func=cmd_evaluate)

    quickstart = commands.add_parser(
        "quickstart", help="run the main job end to end on the built-in data",
        description="Run the main job end to end on the built-in data, printing each step's command so you "
                    "can run it yourself: generate, validate, describe and split the data, train the retrieval "
                    "towers and compare them with the baselines.")
    quickstart.add_argument("--out", default=".runs/quickstart", help="output folder (default .runs/quickstart)")
    quickstart.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    quickstart.add_argument("--tiny", action="store_true", help="a very small run (for tests and smoke checks)")
    quickstart.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
