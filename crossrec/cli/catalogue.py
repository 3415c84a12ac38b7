"""``crossrec catalogue``: add items to, or retire items from, the served models without retraining."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_catalogue(args: argparse.Namespace) -> int:
    from crossrec.pipelines.catalogue import add_items, retire_items

    change = add_items if args.action == "add" else retire_items
    try:
        result = change(args.items, args.model_base_path, work_dir=args.work_dir, progress=not args.quiet)
    except KeyboardInterrupt:
        print("crossrec: interrupted; the previous version keeps serving and nothing half-written was published. "
              "Run the same command again to finish", file=sys.stderr)
        return 130
    print(json.dumps(result.as_dict()))
    return 0


def register(commands) -> None:
    parser = commands.add_parser(
        "catalogue", help="add new items to the served models (placed from their text) or retire items; no retraining",
        description="Change the catalogue of the models served from --model-dir without retraining: "
                    "`add` places new items from their text alone through the served towers (as a new item is "
                    "placed at training time) and `retire` stops recommending items. Either publishes the next "
                    "version of every served model as one set (crossrec serve and TF Serving switch to it without "
                    "a restart; a crash leaves the previous version serving); the weights stay the served ones, so "
                    "answers that involve no changed item do not change. The next `crossrec retrain` starts from "
                    "the changed version. Re-running an interrupted command finishes it.")
    parser.add_argument("action", choices=["add", "retire"],
                        help="add: the items file's items join the catalogue; retire: the listed items leave the "
                             "recommendations (they still count in a request's history)")
    parser.add_argument("--items", required=True, metavar="FILE",
                        help="add: items in the training data's schema (item_id, domain and the text template's "
                             "columns, e.g. title); retire: domain and item_id of each item")
    parser.add_argument("--model-dir", "--model_base_path", "--from", dest="model_base_path", default="saved_models",
                        help="the serving base folder (default saved_models), as `crossrec serve` serves it "
                             "(--model_base_path and --from: older spellings)")
    parser.add_argument("--work-dir", default=".runs/catalogue",
                        help="where run folders live (default .runs/catalogue); finishing a killed run needs the same")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=cmd_catalogue)
