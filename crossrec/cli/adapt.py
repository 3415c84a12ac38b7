"""``crossrec adapt``: the text encoder adapted to the catalogue, alone (``towers.adapt``)."""

from __future__ import annotations

import argparse

from crossrec.cli.flags import add_source_flags, config_from_args


def cmd_adapt(args: argparse.Namespace) -> int:
    from crossrec import api

    config = config_from_args(args)
    if args.preset:
        config.encoder.preset = args.preset
    adaptation = api.adapt(config, budget_minutes=args.budget, progress=not args.quiet)
    report = adaptation.report
    stopped = " (stopped by the time budget)" if report["stopped_by_budget"] else ""
    print(f"\nadapted the text encoder's top {report['layers']} layer(s) on {report['trained_pairs']:,} item pairs: "
          f"{report['steps']:,} steps, {report['epochs']} epochs{stopped}, {report['seconds']:.0f} s "
          f"({report['pairs_per_second']:.0f} pairs/s)")
    print(f"held-out pairs' Recall@10 among each other: {report['recall_at_10_before']:.3f} before, "
          f"{report['recall_at_10_after']:.3f} after")
    print(f"cached in {adaptation.path}\ntraining with `encoder: {{adapt: {{enabled: true}}}}` in the same config "
          "reads it from the cache (same data, split and settings)")
    return 0


def register(commands) -> None:
    adapt = commands.add_parser(
        "adapt", help="adapt the text encoder to the catalogue (contrastive, on items users connect)",
        description="Fine-tune the text encoder's top layers on pairs of items that the same users connect in the "
                    "training split (within and across domains), within a time budget, and cache the adapted "
                    "encoder. A training with encoder.adapt.enabled does this first by itself; run it alone to "
                    "give it a larger budget, or to see what it learns (held-out pairs' Recall@10 before and "
                    "after). A killed run resumes where it stopped.")
    add_source_flags(adapt)
    adapt.add_argument("--budget", type=float, metavar="MINUTES",
                       help="time budget in minutes, encoding included (default encoder.adapt.budget_minutes)")
    adapt.add_argument("--preset", help="text encoder preset folder to adapt (default: all-MiniLM-L6-v2)")
    adapt.add_argument("--quiet", action="store_true", help="no progress bars")
    adapt.set_defaults(func=cmd_adapt)
