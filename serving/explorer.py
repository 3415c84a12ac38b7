"""The explorer page (``crossrec serve --ui``): look at what crossrec recommends, in a browser.

Served from the REST port by the same Starlette app as TF Serving's REST API: ``GET /ui`` is a
static page (HTML + plain JavaScript in ``serving/explorer_static/``, no build step) that asks the
server's own Predict API (``POST /v1/models/<name>[/versions/<v>]:predict``) exactly as any client
does. What the Predict API cannot tell, titles and users' histories, comes from a data folder
through a small read-only JSON API under ``/ui/api/``:

- ``info``: the served models' domains, the data's source and counts, and the feed's default
  weights (``ranking.feed.FEED_DEFAULTS``: where the page's diversity and calibration sliders start);
- ``items?q=TEXT&domain=D&limit=N``: items whose title or id contains TEXT (case-insensitive),
  those added by ``crossrec catalogue add`` since training first (``"added": true``);
- ``users?q=TEXT&limit=N`` and ``users/<id>``: users, and one user's history (oldest first);
- ``titles?keys=D:ID,D:ID``: titles of items (of any domain);
- ``added?keys=D:ID,D:ID``: which of them ``crossrec catalogue add`` placed since the served
  towers were trained (from the served version's training state), with their titles.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from crossrec import schema
from crossrec.config import DataConfig
from ranking.feed import FEED_DEFAULTS
from serving.training_state import AddedItems

STATIC = Path(__file__).resolve().parent / "explorer_static"
MAX_RESULTS = 50
HISTORY = 50


class ExplorerData:
    """Items (with titles) and users' histories, from the data a model was trained on."""

    def __init__(self, items: pd.DataFrame, interactions: pd.DataFrame, source: str):
        self.source = source
        items = items.copy()
        items["title"] = (items[schema.TITLE].astype(str) if schema.TITLE in items else items[schema.ITEM_ID].astype(str))
        items[schema.ITEM_ID] = items[schema.ITEM_ID].astype(str)
        self.items = items[[schema.DOMAIN, schema.ITEM_ID, "title"]].reset_index(drop=True)
        self._search = (self.items["title"] + " " + self.items[schema.ITEM_ID]).str.lower()
        self.titles = dict(zip(zip(self.items[schema.DOMAIN], self.items[schema.ITEM_ID], strict=True),
                               self.items["title"], strict=True))
        order = schema.order_column(interactions.columns)
        frame = interactions.sort_values([schema.USER_ID, order], kind="stable")
        frame = frame.assign(**{schema.USER_ID: frame[schema.USER_ID].astype(str),
                                schema.ITEM_ID: frame[schema.ITEM_ID].astype(str)})
        self.histories = {user: group.tail(HISTORY) for user, group in
                          frame[[schema.USER_ID, schema.DOMAIN, schema.ITEM_ID]].groupby(schema.USER_ID, sort=True)}
        self.users = sorted(self.histories)

    @classmethod
    def load(cls, data: DataConfig, source: str) -> ExplorerData:
        from crossrec.data.loaders import load_dataset

        dataset = load_dataset(data).clean()
        return cls(dataset.items, dataset.interactions, source)

    def item(self, domain: str, item_id: str) -> dict:
        return {"domain": domain, "item_id": item_id, "title": self.titles.get((domain, item_id))}

    def search_items(self, text: str, domain: str, limit: int) -> list[dict]:
        mask = self._search.str.contains(text.lower(), regex=False) if text else pd.Series(True, self.items.index)
        if domain:
            mask &= self.items[schema.DOMAIN] == domain
        found = self.items[mask].head(limit)
        return [self.item(d, i) for d, i in zip(found[schema.DOMAIN], found[schema.ITEM_ID], strict=True)]

    def history(self, user: str) -> list[dict] | None:
        rows = self.histories.get(user)
        if rows is None:
            return None
        return [self.item(d, i) for d, i in zip(rows[schema.DOMAIN], rows[schema.ITEM_ID], strict=True)]


def _limit(request: Request) -> int:
    value = request.query_params.get("limit", "20")
    return max(1, min(MAX_RESULTS, int(value))) if value.isdigit() else 20


def _keys(request: Request) -> list[tuple[str, str]]:
    """The request's ``keys=D:ID,D:ID`` (at most 500)."""
    keys = [k.partition(":") for k in request.query_params.get("keys", "").split(",")[:500] if ":" in k]
    return [(d, i) for d, _, i in keys]


def served_domains(manager) -> list[str]:
    """The domains the served models answer for (from their export metadata)."""
    domains: set[str] = set()
    for name in manager.specs:
        try:
            domains.update(manager.get(name).metadata.get("domains") or [])
        except KeyError:  # no version loaded yet
            continue
    return sorted(domains)


def search_added(added: dict, text: str, domain: str, limit: int) -> list[dict]:
    """Items ``crossrec catalogue add`` placed whose title or id contains ``text`` (case-insensitive),
    marked ``"added": true``; the training data the page reads does not have them."""
    text = text.lower()
    found = []
    for (d, i), about in added.items():
        if (not domain or d == domain) and text in f"{about['title']} {i}".lower():
            found.append({"domain": d, "item_id": i, "title": about["title"], "added": True})
            if len(found) >= limit:
                break
    return found


def explorer_routes(data: ExplorerData | None, manager) -> list:
    """The page, its static files and its JSON API (every answer JSON, errors included)."""
    added_items = AddedItems(manager)

    def need_data():
        return JSONResponse({"error": "no data folder: start the server with --ui_data PATH to search items "
                                      "and users (typed histories work without it)"}, status_code=404)

    async def page(request: Request):
        return FileResponse(STATIC / "index.html")

    async def info(request: Request):
        domains = served_domains(manager)
        common = {"added": len(added_items.served()[1]), "feed_defaults": FEED_DEFAULTS}
        if data is None:
            return JSONResponse({"data": None, "domains": domains, "items": 0, "users": 0, **common})
        return JSONResponse({"data": data.source, "items": len(data.items), "users": len(data.users), **common,
                             "domains": domains or sorted(data.items[schema.DOMAIN].unique().tolist())})

    async def items(request: Request):
        q = request.query_params
        text, domain, limit = q.get("q", "")[:200], q.get("domain", ""), _limit(request)
        found = search_added(added_items.served()[1], text, domain, limit)  # what catalogue add placed, first
        if data is None:
            return JSONResponse(found) if found else need_data()
        return JSONResponse(found + data.search_items(text, domain, limit - len(found)))

    async def users(request: Request):
        if data is None:
            return need_data()
        text = request.query_params.get("q", "")[:200]
        found = [u for u in data.users if text in u] if text else data.users
        return JSONResponse(found[:_limit(request)])

    async def user(request: Request):
        if data is None:
            return need_data()
        history = data.history(request.path_params["user"])
        if history is None:
            return JSONResponse({"error": f"no user {request.path_params['user'][:100]!r} in the data"},
                                status_code=404)
        return JSONResponse({"user_id": request.path_params["user"], "history": history})

    async def titles(request: Request):
        added = added_items.served()[1]
        return JSONResponse({f"{d}:{i}": (data.titles.get((d, i)) if data else None)
                             or added.get((d, i), {}).get("title") for d, i in _keys(request)})

    async def added(request: Request):
        version, items = added_items.served()
        found = {f"{d}:{i}": items[(d, i)] for d, i in _keys(request) if (d, i) in items}
        return JSONResponse({"version": version, "count": len(items), "items": found})

    return [Route("/ui", page), Route("/ui/", page),
            Route("/ui/api/info", info), Route("/ui/api/items", items), Route("/ui/api/users", users),
            Route("/ui/api/users/{user:path}", user), Route("/ui/api/titles", titles), Route("/ui/api/added", added),
            Mount("/ui/static", app=StaticFiles(directory=STATIC), name="explorer_static")]
