"""Loaders: every supported source format -> raw tables -> ``validate`` -> ``Dataset``.

Interaction files are streamed: read and checked in chunks (``io.TableChunks``), so a file of
hundreds of millions of rows is never held as raw text.

- ``table``: Parquet / CSV / CSV.gz / TSV / JSON Lines in the canonical schema, columns renamed by
  ``data.columns``. A directory holding ``interactions.*`` and ``items.*`` (and optionally
  ``users.*``), such as ``crossrec data synth`` writes, works too.
- ``movielens``: an ml-100k (``u.data`` + ``u.item``), ml-1m (``ratings.dat`` + ``movies.dat``)
  or ml-latest / ml-25m (``ratings.csv`` + ``movies.csv``) directory. Item text columns:
  ``title`` and ``categories`` (the genres). ``data.movielens_domain: genre`` makes each movie's
  first genre its domain.
- ``amazon``: Amazon Reviews JSON Lines (2018 or 2023 field names), one reviews + metadata file
  pair per category, each category one domain. Item text columns: ``title``, ``categories``,
  ``brand``, ``description``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.config import DataConfig
from crossrec.data import io
from crossrec.data.dataset import Dataset
from crossrec.data.validate import validate
from crossrec.errors import DataError, Problem


def text_template(config: DataConfig) -> str:
    """The template item text is built with: the config's own, else its source format's default
    (MovieLens, Amazon and the built-in data read "{title}. {categories}")."""
    uses_categories = config.format in ("amazon", "movielens") or bool(config.amazon_files) \
        or config.interactions is None
    if config.text_template == schema.DEFAULT_TEXT_TEMPLATE and uses_categories:
        return "{title}. {categories}"
    return config.text_template


def load_dataset(config: DataConfig) -> Dataset:
    """Loads and validates the data ``config`` describes (the built-in data when it names none).
    A table-format interactions file is streamed: read and checked in chunks."""
    if config.format == "amazon" or config.amazon_files:
        raw = read_amazon(config.amazon_files)
    elif config.interactions is None:
        from crossrec.data.synth import generate

        raw = generate(config.synth)
    elif config.format == "movielens":
        raw = read_movielens(config.interactions, domain=config.movielens_domain)
    else:
        path, items, users = _table_paths(config.interactions, config.items, config.users)
        chunks = io.TableChunks(path, what="interactions")  # read first: its errors come first
        raw = Dataset(chunks, _read_items(items), io.read_table(users, what="users") if users else None)
    interactions, items, users, report = validate(
        raw.interactions, raw.items, raw.users, columns=config.columns, text_template=text_template(config),
        unknown_items=config.unknown_items)
    return Dataset(interactions, items, users, report)


def item_titles(path: str | Path) -> dict[tuple[str, str], str]:
    """{(domain, item_id): title} from an items table, or the items table of a data folder
    (what `crossrec query --items` prints beside ids); items without a title are left out."""
    path = Path(path)
    found = _find_table(path, "items") if path.is_dir() else path
    if found is None or not found.exists():
        raise DataError(Problem("no items table here", file=str(path),
                                fix="pass an items file, or a folder with items.parquet / .csv"))
    items = io.read_table(found, what="items")
    if schema.TITLE not in items.columns:
        return {}
    return {(str(d), str(i)): str(t) for d, i, t in zip(items[schema.DOMAIN], items[schema.ITEM_ID],
                                                       items[schema.TITLE], strict=True) if pd.notna(t)}


def _find_table(directory: Path, name: str) -> Path | None:
    for suffix in io.TABLE_SUFFIXES:
        candidate = directory / f"{name}{suffix}"
        if candidate.exists():
            return candidate
    return None


def _table_paths(interactions: str, items: str | None, users: str | None, *,
                 items_required: bool = True) -> tuple[Path, str | None, str | None]:
    """The interactions, items and users files; ``interactions`` may be a directory of them."""
    path = Path(interactions)
    if not path.exists():
        raise DataError(Problem("not found: no such file or folder", file=str(path),
                                fix="check the path (relative paths are taken from the folder you run crossrec "
                                    "in), or write the built-in data there with `crossrec data synth`"))
    if path.is_dir():
        found = _find_table(path, "interactions")
        if found is None:
            raise DataError(Problem(
                "directory has no interactions.parquet / .csv / .csv.gz", file=str(path),
                fix="point data.interactions at a file, or at a folder written by `crossrec data synth`"))
        items = items or (str(_find_table(path, "items")) if _find_table(path, "items") else None)
        users = users or (str(_find_table(path, "users")) if _find_table(path, "users") else None)
        path = found
    if items is None and items_required:
        raise DataError(Problem("no items table given", file=str(path),
                                fix="set data.items (CLI: --items) to the items file"))
    return path, items, users


def _read_items(items: str | None) -> pd.DataFrame:
    return io.read_table(items, what="items") if items else pd.DataFrame(columns=list(schema.ITEM_REQUIRED))


def read_table_dataset(interactions: str, items: str | None, users: str | None = None, *,
                       items_required: bool = True) -> Dataset:
    """Raw tables in the canonical layout, read whole; ``interactions`` may be a directory of
    them. Without ``items_required`` a missing items table reads as an empty one (retraining
    data that adds interactions only)."""
    path, items, users = _table_paths(interactions, items, users, items_required=items_required)
    interaction_table = io.read_table(path, what="interactions")  # first: its errors come first
    return Dataset(interaction_table, _read_items(items), io.read_table(users, what="users") if users else None)


# --- MovieLens -------------------------------------------------------------------------------

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def _renamed(chunks, columns: dict[str, str]):
    return (chunk.rename(columns=columns) for chunk in chunks)


def read_movielens(directory: str, *, domain: str = "movies") -> Dataset:
    """Raw MovieLens tables (see the module docstring for the supported releases); the ratings
    (ml-25m: 25M rows) as chunks for ``validate`` to stream."""
    root = Path(directory)
    if (root / "u.data").exists():
        ratings = io.TableChunks(root / "u.data", what="ratings", sep="\t", header=None,
                                 names=["user_id", "item_id", "rating", "timestamp"])
        item_cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url"] + ML100K_GENRES
        movies = io.read_table(root / "u.item", what="movies", sep="|", header=None, names=item_cols,
                               encoding="latin-1")
        flags = movies[ML100K_GENRES].fillna("0").astype(str).eq("1").to_numpy()
        movies["categories"] = ["|".join(g for g, f in zip(ML100K_GENRES, row, strict=True) if f)
                                for row in flags]
        movies = movies.drop(columns=ML100K_GENRES + ["video_release_date"])
    elif (root / "ratings.dat").exists():
        ratings = io.TableChunks(root / "ratings.dat", what="ratings", sep="::", header=None,
                                 engine="python", names=["user_id", "item_id", "rating", "timestamp"])
        movies = io.read_table(root / "movies.dat", what="movies", sep="::", header=None, engine="python",
                               names=["item_id", "title", "categories"], encoding="latin-1")
    elif (root / "ratings.csv").exists():
        ratings = _renamed(io.TableChunks(root / "ratings.csv", what="ratings"),
                           {"userId": "user_id", "movieId": "item_id"})
        movies = io.read_table(root / "movies.csv", what="movies").rename(
            columns={"movieId": "item_id", "genres": "categories"})
    else:
        raise DataError(Problem(
            "not a MovieLens directory: expected u.data + u.item (ml-100k), ratings.dat + movies.dat "
            "(ml-1m) or ratings.csv + movies.csv (ml-latest)", file=str(root),
            fix="point data.interactions at the unpacked MovieLens folder"))
    genres = movies["categories"].fillna("").astype(str)
    if domain == "genre":
        first = genres.str.split("|").str[0].str.strip().str.lower()
        movies[schema.DOMAIN] = first.where(first != "", "unknown")
        domain_of = movies.drop_duplicates("item_id").set_index("item_id")[schema.DOMAIN]
        ratings = (chunk.assign(**{schema.DOMAIN: chunk["item_id"].map(domain_of).fillna("unknown")})
                   for chunk in ratings)
    else:
        movies[schema.DOMAIN] = "movies"
        ratings = (chunk.assign(**{schema.DOMAIN: "movies"}) for chunk in ratings)
    movies["categories"] = genres.str.replace("|", ", ", regex=False).replace("(no genres listed)", "")
    return Dataset(ratings, movies)


# --- Amazon Reviews ------------------------------------------------------------------------------

def _join(value) -> str:
    if isinstance(value, list | tuple | np.ndarray):
        return " > ".join(str(v) for v in value if str(v).strip())
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def _amazon_reviews(chunks: io.TableChunks, domain: str):
    """Review chunks of one category in the canonical columns (2018 or 2023 field names)."""
    keep = ("user_id", "item_id", "rating", "timestamp", *schema.BOOKKEEPING)
    for r in chunks:
        if "reviewerID" in chunks.columns:  # 2018 release
            r = r.rename(columns={"reviewerID": "user_id", "asin": "item_id", "overall": "rating",
                                  "unixReviewTime": "timestamp"})
        else:  # 2023 release: timestamps in milliseconds, items keyed by parent_asin
            r = r.rename(columns={"parent_asin": "item_id"} if "parent_asin" in r.columns else {"asin": "item_id"})
            if "timestamp" in r.columns:
                ms = pd.to_numeric(r["timestamp"], errors="coerce")
                r["timestamp"] = (ms // 1000).astype(object).where(ms.notna(), r["timestamp"])
        yield r[[c for c in r.columns if c in keep]].assign(domain=domain)


def read_amazon(files: dict[str, dict[str, str]]) -> Dataset:
    """Raw tables from Amazon Reviews JSON Lines pairs: {domain: {reviews: path, meta: path}};
    the reviews as chunks for ``validate`` to stream."""
    if not files:
        raise DataError(Problem("no Amazon files given",
                                fix="set data.amazon_files: {<domain>: {reviews: <file>, meta: <file>}} "
                                    "(CLI: --amazon DOMAIN=REVIEWS,META)"))
    reviews, metas = [], []
    for domain, pair in files.items():
        for key in ("reviews", "meta"):
            if key not in pair:
                raise DataError(Problem(f"Amazon domain '{domain}' has no '{key}' file",
                                        fix=f"set data.amazon_files.{domain}.{key}"))
        chunks = io.TableChunks(pair["reviews"], what="reviews")
        m = io.read_table(pair["meta"], what="item metadata")
        if "reviewerID" in chunks.columns:  # 2018 release
            m = m.rename(columns={"asin": "item_id", "category": "categories"})
        else:
            m = m.rename(columns={"parent_asin": "item_id", "store": "brand"})
            if "categories" not in m.columns and "main_category" in m.columns:
                m["categories"] = m["main_category"]
        for column in ("title", "categories", "brand", "description"):
            m[column] = m[column].map(_join) if column in m.columns else ""
        keep_m = ("item_id", "title", "categories", "brand", "description", *schema.BOOKKEEPING)
        reviews.append(_amazon_reviews(chunks, domain))
        metas.append(m[[c for c in m.columns if c in keep_m]].assign(domain=domain))
    return Dataset(itertools.chain.from_iterable(reviews), pd.concat(metas, ignore_index=True))


def parse_amazon_flag(values: list[str]) -> dict[str, dict[str, str]]:
    """``DOMAIN=REVIEWS,META`` command-line values -> the ``amazon_files`` mapping."""
    files = {}
    for value in values:
        domain, _, paths = value.partition("=")
        parts = paths.split(",")
        if not domain or len(parts) != 2:
            raise DataError(Problem(f"--amazon {value!r} is not DOMAIN=REVIEWS,META",
                                    fix="e.g. --amazon books=Books.jsonl.gz,meta_Books.jsonl.gz"))
        files[domain] = {"reviews": parts[0], "meta": parts[1]}
    return files
