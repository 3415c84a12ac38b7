"""``crossrec export``: versioned SavedModels in TF Serving's layout."""

from __future__ import annotations

import argparse

from crossrec.config import load_config


def cmd_export(args: argparse.Namespace) -> int:
    from crossrec import api

    config = load_config(args.config) if args.config else None
    settings = {k: v for k, v in [("index", args.index), ("max_k", args.max_k)] if v is not None}
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    result = api.export(args.retrieval, args.out, rankers=args.ranking, config=config, models=models,
                        version=args.version, progress=not args.quiet, **settings)
    for name, path in result.paths.items():
        index = result.metadata[name].get("index") or {}
        recall = f", index recall@10 {index['recall@10']:.3f} vs exact" if "recall@10" in index else ""
        print(f"{name}: version {result.versions[name]} -> {path}{recall}")
    print(f"exported in {result.seconds:.0f} s; TF Serving model config: {args.out}/models.config")
    return 0


def register(commands) -> None:
    export = commands.add_parser(
        "export", help="write versioned SavedModels in TF Serving's layout (retrieval, ranking, ...)",
        description="Export the trained towers and rankers as SavedModels under OUT/<model>/<version>/ "
                    "(TF Serving's layout; the next free version unless --version): retrieval (with a "
                    "brute-force or ScaNN index), ranking, recommender (retrieve -> rank in one call) and "
                    "item_encoder (text -> embedding). The models are one set: one version number for all, each "
                    "written aside, all renamed into place together; run the same command again after a crash and "
                    "it finishes the interrupted publish. "
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
    export.add_argument("--version", type=int, help="version number to give every model (default: the next free one in OUT)")
    export.add_argument("--quiet", action="store_true", help="no progress output")
    export.set_defaults(func=cmd_export)
