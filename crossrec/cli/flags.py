"""The flags several commands share (where the data comes from, training overrides, a feed's
weights) and what they resolve to."""

from __future__ import annotations

import argparse
from dataclasses import replace

from crossrec.config import Config, load_config
from crossrec.errors import ConfigError


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "data source", "Where the data comes from. Flags override the config file's `data:` section; "
                       "with neither, the built-in synthetic data is used.")
    group.add_argument("--config", help="YAML config file (every key: docs/reference, or crossrec.api.config)")
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


def add_feed_weight_flags(parser: argparse.ArgumentParser) -> None:
    """``--diversity`` and ``--calibration`` (``crossrec query --feed``, ``crossrec candidates --feed``)."""
    parser.add_argument("--diversity", type=float,
                        help="with --feed: 0 to 1, how much to avoid items like those already listed "
                             "(default: ranking.feed's, chosen by bench.feed; 0 = by score alone)")
    parser.add_argument("--calibration", type=float,
                        help="with --feed: 0 to 100, how strongly to match the history's domain shares "
                             "(default: ranking.feed's, chosen by bench.feed; 0 = not at all)")


def feed_weights(args: argparse.Namespace) -> dict[str, float]:
    """The feed weights given on the command line (the rest keep their defaults); an error when
    they are given without ``--feed``."""
    weights = {k: v for k, v in (("diversity", args.diversity), ("calibration", args.calibration)) if v is not None}
    if weights and not args.feed:
        raise ConfigError("--diversity and --calibration set a feed: give --feed as well")
    return weights


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training", "Override the config file's train/encoder settings.")
    group.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    group.add_argument("--batch-size", type=int, help="examples per batch")
    group.add_argument("--preset", help="text encoder preset folder (default: all-MiniLM-L6-v2)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> Config:
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


def load(args: argparse.Namespace):
    from crossrec.data.loaders import load_dataset

    config = config_from_args(args)
    return config, load_dataset(config.data)


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    train = config.train
    if getattr(args, "epochs", None) is not None:
        train = replace(train, epochs=args.epochs)
    if getattr(args, "batch_size", None) is not None:
        train = replace(train, batch_size=args.batch_size)
    encoder = config.encoder
    if getattr(args, "preset", None):
        encoder = replace(encoder, preset=args.preset)
    return replace(config, train=train, encoder=encoder)
