"""``crossrec query``: ask a running server (crossrec serve or tensorflow/serving) over gRPC."""

from __future__ import annotations

import argparse
import json
import sys

from crossrec.cli.flags import add_feed_weight_flags, feed_weights
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
    weights = feed_weights(args)
    if not args.feed and not args.domain:
        raise ConfigError("crossrec query: --domain DOMAIN is required (or --feed for one list across every domain)")
    with CrossrecClient(args.server, timeout=args.timeout) as client:
        try:
            if args.feed:
                rows = client.feed(history, args.k, exclude_history=not args.keep_seen, **weights)
            elif args.model == "retrieval":
                rows = client.retrieve(history, args.domain, args.k, exclude_history=not args.keep_seen)
            else:
                rows = client.recommend(history, args.domain, args.k, exclude_history=not args.keep_seen,
                                        model=args.model)
        except grpc.RpcError as error:
            raise ConfigError(rpc_error_message(args.server, error)) from None
    titles = {}
    if args.items:
        from crossrec.data.loaders import item_titles

        titles = item_titles(args.items)
    note = history_note(len(history), rows.history_known)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    kind = "feed" if args.feed else args.model
    print(SCORE_MEANING.get(kind, "score: the model's score, higher first"))
    note = order_note(kind, [row["score"] for row in rows])
    if note:
        print(note)
    for rank, row in enumerate(rows, 1):
        because = row.get("because")
        reason = ""
        if because:
            by = (because["domain"], because["item_id"])
            reason = f"  because of {by[0]}:{by[1]}" + (f" {titles[by]}" if by in titles else "") + \
                f" ({because['weight']:.0%})"
        domain = row.get("domain", args.domain)
        title = titles.get((domain, row["item_id"]), "")
        item = f"{domain}:{row['item_id']}" if args.feed else row["item_id"]
        name = f"{item:<16} {title[:40]:<40}" if titles else f"{item:<24}"
        print(f"{rank:3d}. {name} score {row['score']:.4f}{reason}")
    return 0


def rpc_error_message(server: str, error) -> str:
    """A failed call as the user can act on it: the status, the server's words, and for a server
    that is not there, how to start one."""
    import grpc

    message = f"{server}: {error.code().name}: {error.details()}"
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        message += (f"\nno server answers at {server}: start one with `crossrec serve --model_base_path "
                    "saved_models` (it prints the gRPC port) or pass --server HOST:PORT")
    return message


ORDER_REASON = {
    "feed": "diversity and calibration pick each next item, not the score alone",
    "recommender": "items added since training keep the place the towers gave them, which the ranker's score "
                   "does not set",
}


def order_note(kind: str, scores: list[float]) -> str | None:
    """Why a list is not in score order, when it is not (else None)."""
    inversions = sum(1 for a, b in zip(scores, scores[1:], strict=False) if b > a)
    if not inversions:
        return None
    reason = ORDER_REASON.get(kind, "the served order is not the score's")
    return f"order: the served order; {inversions} score(s) sit above a larger one ({reason})"


SCORE_MEANING = {
    "feed": "score: the probability that the item is the user's next one, on one scale for every domain "
            "(higher first; diversity and calibration may order the list otherwise)",
    "recommender": "score: the ranker's engagement logit (higher = more likely the user's next item); "
                   "(N%): the history item's share of the pick's similarity to the whole history",
    "retrieval": "score: the towers' dot product of the user's and the item's vectors (higher first); "
                 "(N%): the history item's share of the pick's similarity to the whole history",
}


def history_note(asked: int, known: int | None) -> str | None:
    """What to tell the user when the model knew none of the history (it reads the most recent
    ``history_length`` known items, so a partly known history is one it can use)."""
    if known is None or asked == 0 or known > 0:
        return None
    return (f"none of the {asked} history items is known to the model (check each DOMAIN:ITEM_ID against "
            "the data it was trained on): these are the recommendations for a brand-new user")


def register(commands) -> None:
    query = commands.add_parser(
        "query", help="ask a running server for recommendations (gRPC client)",
        description="Send one user's history to a running server (crossrec serve or tensorflow/serving) and "
                    "print the recommendations.")
    query.add_argument("--server", default="127.0.0.1:8500", help="gRPC address (default 127.0.0.1:8500)")
    query.add_argument("--history", action="append", default=[], metavar="DOMAIN:ITEM_ID",
                       help="one history item, oldest first (repeatable)")
    query.add_argument("--domain", help="the domain to recommend from (required without --feed)")
    query.add_argument("--feed", action="store_true", help="one list across every domain (the recommender's "
                                                           "feed signature) instead of one domain")
    add_feed_weight_flags(query)
    query.add_argument("--k", type=int, default=10, help="how many (default 10)")
    query.add_argument("--model", default="recommender", help="recommender (retrieve + rank, default) or retrieval")
    query.add_argument("--keep-seen", action="store_true", help="allow items already in the history")
    query.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.add_argument("--items", metavar="PATH", help="an items table, or a data folder, to print titles beside "
                                                       "the ids (e.g. the quickstart's .runs/quickstart/data)")
    query.set_defaults(func=cmd_query)
