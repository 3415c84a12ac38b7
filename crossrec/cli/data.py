"""``crossrec data``: generate, check, describe and split datasets."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from crossrec.cli.flags import add_source_flags, load
from crossrec.config import load_config
from crossrec.errors import ConfigError


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
    _, dataset = load(args)
    inter = dataset.interactions
    print(f"OK: {len(inter)} interactions from {inter['user_id'].nunique()} users, "
          f"{len(dataset.items)} items in {len(dataset.domains)} domains ({', '.join(dataset.domains)})"
          + (f", {len(dataset.users)} users in the users table" if dataset.users is not None else ""))
    for note in dataset.report.notes:
        print(f"note: {note}")
    return 0


def cmd_data_describe(args: argparse.Namespace) -> int:
    from crossrec.data.describe import describe, render

    _, dataset = load(args)
    tables = describe(dataset)
    if args.tables:
        wanted = [t.strip() for t in args.tables.split(",") if t.strip()]
        unknown = sorted(set(wanted) - set(tables))
        if unknown:
            raise ConfigError(f"--tables: unknown {', '.join(unknown)}; choose from {', '.join(tables)}")
        tables = {k: tables[k] for k in wanted}
    if args.json:
        print(json.dumps({k: json.loads(v.to_json(orient="index")) for k, v in tables.items()}, indent=2))
    else:
        print(render(tables))
    return 0


def cmd_data_split(args: argparse.Namespace) -> int:
    from crossrec.data.dataset import Dataset
    from crossrec.data.splits import split, split_counts

    config, dataset = load(args)
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


def register(commands) -> None:
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
    add_source_flags(validate)
    validate.set_defaults(func=cmd_data_validate)

    describe = data_commands.add_parser(
        "describe", help="users/items/interactions per domain, overlap, history lengths",
        description="Print users, items and interactions per domain, the users shared between domains, "
                    "and history lengths.")
    add_source_flags(describe)
    describe.add_argument("--json", action="store_true", help="print JSON instead of tables")
    describe.add_argument("--tables", metavar="NAMES", help="only these, comma-separated: per_domain, overlap, "
                                                            "domains_per_user, history (default: all)")
    describe.set_defaults(func=cmd_data_describe)

    split = data_commands.add_parser(
        "split", help="add a train/validation/test split column and write the dataset",
        description="Split interactions into train / validation / test and write the dataset with a 'split' "
                    "column. Kinds: leave_last_out (per user and domain), cold_start (some users lose all of "
                    "one domain), new_item (some items never appear in training).")
    add_source_flags(split)
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
