"""Summary statistics of a dataset: sizes per domain, overlap between domains, history lengths."""

from __future__ import annotations

import pandas as pd

from crossrec import schema
from crossrec.data.dataset import Dataset


def describe(dataset: Dataset) -> dict[str, pd.DataFrame]:
    inter, items = dataset.interactions, dataset.items
    per_domain = pd.DataFrame({
        "users": inter.groupby(schema.DOMAIN)[schema.USER_ID].nunique(),
        "items": items.groupby(schema.DOMAIN)[schema.ITEM_ID].nunique(),
        "items_used": inter.groupby(schema.DOMAIN)[schema.ITEM_ID].nunique(),
        "interactions": inter.groupby(schema.DOMAIN).size(),
    }).fillna(0).astype(int)
    total = pd.DataFrame({"users": [inter[schema.USER_ID].nunique()], "items": [len(items)],
                          "items_used": [len(inter[[schema.DOMAIN, schema.ITEM_ID]].drop_duplicates())],
                          "interactions": [len(inter)]}, index=["all"])
    per_domain = pd.concat([per_domain, total])
    per_domain.index.name = "domain"

    users_by_domain = inter.groupby(schema.DOMAIN)[schema.USER_ID].agg(set)
    domains = list(users_by_domain.index)
    overlap = pd.DataFrame([[len(users_by_domain[a] & users_by_domain[b]) for b in domains] for a in domains],
                           index=domains, columns=domains)
    overlap.index.name = "users in both"
    n_domains = inter.groupby(schema.USER_ID)[schema.DOMAIN].nunique().value_counts().sort_index()
    n_domains.index.name = "domains per user"

    lengths = inter.groupby([schema.USER_ID, schema.DOMAIN]).size().unstack()
    lengths["all"] = inter.groupby(schema.USER_ID).size()
    history = lengths.describe(percentiles=[0.5, 0.9]).T[["count", "mean", "min", "50%", "90%", "max"]]
    history = history.rename(columns={"count": "users", "50%": "median", "90%": "p90"}).round(1)
    history.index.name = "history length"
    return {"per_domain": per_domain, "overlap": overlap,
            "domains_per_user": n_domains.rename("users").to_frame(), "history": history}


def render(tables: dict[str, pd.DataFrame]) -> str:
    titles = {"per_domain": "Per domain", "overlap": "Users shared between domains",
              "domains_per_user": "Domains per user", "history": "History length per user"}
    return "\n\n".join(f"{titles[k]}\n{v.to_string()}" for k, v in tables.items())
