"""``crossrec query``: ask a running server (crossrec serve or tensorflow/serving) over gRPC."""

from __future__ import annotations

import argparse
import json

from crossrec.errors import ConfigError


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
        because = row.get("because")
        reason = (f"  because of {because['domain']}:{because['item_id']} ({because['weight']:.0%})"
                  if because else "")
        print(f"{rank:3d}. {row['item_id']:<24} score {row['score']:.4f}{reason}")
    return 0


def register(commands) -> None:
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
