"""The quickstart's serving step: start the embedded server on loopback, ask it for three kinds of
users over gRPC with the client, print the answers with item titles and the served "because you
liked ..." (the history item that most drove each recommendation, computed in the model's graph), stop it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crossrec import schema
from crossrec.config import DataConfig
from crossrec.data.loaders import load_dataset
from serving.client import CrossrecClient
from serving.models import ModelManager, ModelSpec, wait_until_ready
from serving.server import Server, ServerOptions, free_port

BUILT_IN_TARGET = "movies"


def choose_target(data_dir: Path) -> str:
    """The domain a run on the user's own data recommends from: the one with the fewest
    interactions, where knowledge from the others matters most."""
    counts = load_dataset(DataConfig(interactions=str(data_dir))).interactions[schema.DOMAIN].value_counts()
    return str(counts.sort_values(kind="stable").index[0])


def source_domain(interactions: pd.DataFrame, target: str) -> str:
    """The most interacted-with domain other than ``target`` (``target`` itself where it is the only one)."""
    counts = interactions[schema.DOMAIN].astype(str).value_counts()
    others = [d for d in counts.index if d != target]
    return others[0] if others else target


def _users(interactions: pd.DataFrame, target: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(label, history) for a warm user, a cross-domain cold-start user and a brand-new user."""
    order = schema.order_column(interactions.columns)
    frame = interactions.sort_values([schema.USER_ID, order], kind="stable")
    per_user = frame.groupby(schema.USER_ID)[schema.DOMAIN].agg(set)
    warm = frame[frame[schema.DOMAIN] == target][schema.USER_ID].value_counts().index[0]
    no_target = per_user[per_user.apply(lambda d: target not in d)].index
    users = []

    def history(user):
        rows = frame[frame[schema.USER_ID] == user].tail(12)
        return list(zip(rows[schema.DOMAIN], rows[schema.ITEM_ID].astype(str), strict=True))

    users.append((f"warm user {warm} (has {target} history)", history(warm)))
    if len(no_target):
        users.append((f"cross-domain cold-start user {no_target[0]} (no {target} history)", history(no_target[0])))
    source = source_domain(frame, target)
    popular = frame[frame[schema.DOMAIN] == source][schema.ITEM_ID].value_counts().index[:3]
    users.append((f"brand-new user, known only by a history of three {source} items",
                  [(source, str(i)) for i in popular]))
    return users


def example_history(data_dir: Path, target: str) -> tuple[str, str]:
    """(domain, item id) of the most popular item of the source domain: a history to try the
    served models with."""
    frame = load_dataset(DataConfig(interactions=str(data_dir))).interactions
    source = source_domain(frame, target)
    return source, str(frame[frame[schema.DOMAIN] == source][schema.ITEM_ID].astype(str).value_counts().index[0])


RECENT = 2  # the most recent history items shown beside those the picks are explained by


def _show(label: str, history, rows, titles, k: int, target: str = BUILT_IN_TARGET) -> None:
    """A user's history as the picks use it (the most recent items and every item a pick is
    explained by), then the picks with their explanation."""
    title = lambda domain, item: titles.get((domain, item), item)  # noqa: E731
    because = {(r["because"]["domain"], r["because"]["item_id"]) for r in rows if r.get("because")}
    recent = [i for i in range(len(history)) if i >= len(history) - RECENT]
    cited = [i for i, key in enumerate(history) if key in because and i not in recent]
    print(f"\n{label}; {len(history)} history items (numbered oldest first):")
    for heading, shown in ((f"the {len(recent)} most recent", recent), ("the others the picks are explained by",
                                                                         cited)):
        if shown:
            print(f"  {heading}:")
        for i in shown:
            domain, item = history[i]
            print(f"    {i + 1:>3}. {domain:<8} {title(domain, item)}")
    print(f"  recommended {target} (recommender model: retrieve, rank, top {k}):")
    for rank, row in enumerate(rows, 1):
        by = row.get("because")
        reason = (f"  <- because you liked {title(by['domain'], by['item_id'])} ({by['weight']:.0%})" if by else "")
        print(f"  {rank}. {title(target, row['item_id'])}{reason}")


def serve_and_query(saved_models: Path, data_dir: Path, target: str = BUILT_IN_TARGET, k: int = 5) -> None:
    dataset = load_dataset(DataConfig(interactions=str(data_dir))).clean()
    titles = (dataset.items.set_index([schema.DOMAIN, schema.ITEM_ID])[schema.TITLE]
              if schema.TITLE in dataset.items else {})
    names = ("retrieval", "ranking", "recommender", "item_encoder")
    manager = ModelManager([ModelSpec(n, saved_models / n) for n in names if (saved_models / n).exists()])
    server = Server(manager, ServerOptions(port=0, rest_api_port=free_port(), poll_seconds=0)).start()
    try:
        wait_until_ready(manager)
        print(f"embedded server: gRPC 127.0.0.1:{server.port}, REST http://127.0.0.1:{server.rest_port}")
        with CrossrecClient(f"127.0.0.1:{server.port}") as client:
            for label, history in _users(dataset.interactions, target):
                rows = client.recommend(history, target, k=k)
                _show(label, history, rows, titles, k, target)
        print("\n(N%) after a pick: the history item that drove it most, and its share of the pick's "
              "similarity to the whole history")
    finally:
        server.stop()
        print("embedded server stopped")

