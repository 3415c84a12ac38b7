"""Turns raw tables into the canonical schema, checking every rule on the way.

All problems found are gathered and raised together as one ``DataError`` whose lines each name
the file, the row, the column and the fix. Nothing is written by anyone until this passes.
The interactions may come as one DataFrame or as chunks (``io.TableChunks``): each chunk is
checked and made canonical on its own, so a large file is never held as raw text.
"""

from __future__ import annotations

import difflib
import string
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.data.problems import ProblemLog, file_of
from crossrec.errors import DataError, Problem


@dataclass
class Report:
    """What validation changed or noticed without failing (shown by the CLI)."""

    notes: list[str] = field(default_factory=list)
    dropped_unknown_items: int = 0
    dropped_duplicate_items: int = 0


def _apply_mapping(frame: pd.DataFrame, columns: dict[str, str], what: str,
                   canonical: tuple[str, ...]) -> tuple[pd.DataFrame, list[Problem]]:
    problems = []
    rename = {}
    for target, source in columns.items():
        if target not in canonical:
            continue
        if source in frame.columns:
            rename[source] = target
        elif target not in frame.columns:
            problems.append(Problem(
                f"the column mapping says '{target}' comes from column '{source}', "
                f"which the {what} file does not have", file=file_of(frame, what), column=source,
                fix=f"fix data.columns.{target} (columns present: {_present(frame)})"))
    return frame.rename(columns=rename), problems


def _present(frame: pd.DataFrame) -> str:
    return ", ".join(c for c in frame.columns if c not in schema.BOOKKEEPING)


# columns that mean something of their own: never suggested as another column's misspelling
KNOWN_COLUMNS = frozenset(schema.INTERACTION_REQUIRED + schema.INTERACTION_OPTIONAL + schema.ITEM_REQUIRED
                          + (schema.TITLE, schema.TEXT))


def _close_column(name: str, frame: pd.DataFrame) -> str | None:
    """The present column that looks like a misspelling of ``name`` (never a known column)."""
    candidates = [c for c in frame.columns if c not in schema.BOOKKEEPING and c not in KNOWN_COLUMNS]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return close[0] if close else None


def _require_columns(frame: pd.DataFrame, required, what: str) -> list[Problem]:
    problems = []
    present = [c for c in frame.columns if c not in schema.BOOKKEEPING]
    for name in required:
        if name not in frame.columns:
            close = [c for c in [_close_column(name, frame)] if c]
            if close:
                fix = (f"rename column '{close[0]}' to '{name}', or map it: data.columns.{name}: {close[0]} "
                       f"(CLI: --column {name}={close[0]})")
            else:
                fix = f"add the column, or map an existing one: data.columns.{name}: <column>"
            problems.append(Problem(f"missing required column '{name}' (columns present: {', '.join(present)})",
                                    file=file_of(frame, what), column=name, fix=fix))
    return problems


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(str).str.strip() == "")


# The longest id, domain name and item text a dataset may hold (characters). An id is a key, not a
# payload: a 50 MB user_id once validated and trained. Texts are cut by the encoder's sequence
# length long before this; the bound is what a served request may carry (--max_string_bytes).
MAX_ID_CHARS = {schema.USER_ID: 256, schema.ITEM_ID: 256, schema.DOMAIN: 64}
MAX_TEXT_CHARS = 65_536


def _clean_ids(frame: pd.DataFrame, columns, what: str, log: ProblemLog) -> None:
    for column in columns:
        log.rows(frame, _blank(frame[column]), what=what, column=column, message=f"{column} is empty",
                 fix=f"give every row a {column}, or delete the row")
        frame[column] = frame[column].astype(str).str.strip()
        limit = MAX_ID_CHARS.get(column)
        if limit:
            log.rows(frame, frame[column].str.len() > limit, what=what, column=column,
                     message=lambda r, c=column, n=limit: f"{c} is {len(r[c]):,} characters long (at most {n})",
                     fix=f"{column}s are keys: map each long value to a short one (e.g. a hash) before loading")


# The largest magnitude a rating or weight may have: beyond it a loss overflows float32 (a weight
# of 1e300 made every embedding NaN). Timestamps may be seconds or milliseconds; beyond 2^53 they
# are no longer exact integers.
MAX_MAGNITUDE = 1e6
MAX_TIMESTAMP = 2.0 ** 53


def _out_of_range(values: pd.Series, limit: float) -> pd.Series:
    """Numbers that are not finite or beyond ``limit`` in magnitude (NaN = blank is not flagged)."""
    return values.notna() & ~(values.abs() <= limit)


def _numeric(frame: pd.DataFrame, column: str, what: str, log: ProblemLog, *, fix: str) -> None:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    log.rows(frame, values.isna() & ~_blank(raw), what=what, column=column,
             message=lambda r: f"{column} {r[column]!r} is not a number", fix=fix)
    absurd = _out_of_range(values, MAX_MAGNITUDE)
    log.rows(frame, absurd, what=what, column=column,
             message=lambda r: f"{column} {r[column]!r} is not a finite number of at most "
                               f"{MAX_MAGNITUDE:g} in magnitude", fix=fix)
    frame[column] = values.where(~absurd).astype("float64")


def _timestamps(frame: pd.DataFrame, what: str, log: ProblemLog) -> None:
    """Epoch seconds (numbers) or ISO 8601 text -> int64 epoch seconds."""
    raw = frame[schema.TIMESTAMP]
    blank = _blank(raw)
    numeric = pd.to_numeric(raw, errors="coerce")
    seconds = pd.Series(np.nan, index=frame.index, dtype="float64")
    seconds[numeric.notna()] = numeric[numeric.notna()]
    text = numeric.isna() & ~blank
    if text.any():
        parsed = pd.to_datetime(raw[text].astype(str), errors="coerce", utc=True, format="ISO8601")
        ok = parsed.notna()
        seconds[parsed.index[ok]] = (parsed[ok] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    absurd = _out_of_range(seconds, MAX_TIMESTAMP)
    log.rows(frame, absurd, what=what, column=schema.TIMESTAMP,
             message=lambda r: f"timestamp {r[schema.TIMESTAMP]!r} is not a finite time",
             fix="use epoch seconds (e.g. 1700000000), epoch milliseconds or ISO 8601")
    seconds = seconds.where(~absurd, 0.0)
    log.rows(frame, seconds.isna(), what=what, column=schema.TIMESTAMP,
             message=lambda r: (f"timestamp {r[schema.TIMESTAMP]!r} is not a time"
                                if not _blank(pd.Series([r[schema.TIMESTAMP]])).iloc[0] else "timestamp is empty"),
             fix="use epoch seconds (e.g. 1700000000) or ISO 8601 (e.g. 2024-03-01T12:00:00Z)")
    frame[schema.TIMESTAMP] = seconds.fillna(0).astype("int64")


def _seq_pos(frame: pd.DataFrame, what: str, log: ProblemLog) -> None:
    values = pd.to_numeric(frame[schema.SEQ_POS], errors="coerce")
    bad = values.isna() | (values != values.round()) | _out_of_range(values, MAX_TIMESTAMP)
    log.rows(frame, bad, what=what, column=schema.SEQ_POS,
             message=lambda r: f"seq_pos {r[schema.SEQ_POS]!r} is not a whole number",
             fix="give each interaction its integer position in the user's history")
    frame[schema.SEQ_POS] = values.where(~bad).fillna(0).astype("int64")


def _clean_interactions(chunk: pd.DataFrame, log: ProblemLog) -> pd.DataFrame:
    """One chunk of interactions (columns already mapped and present) in canonical types."""
    what = "interactions"
    _clean_ids(chunk, schema.INTERACTION_REQUIRED, what, log)
    if schema.TIMESTAMP in chunk.columns:
        _timestamps(chunk, what, log)
    if schema.SEQ_POS in chunk.columns:
        _seq_pos(chunk, what, log)
    if schema.RATING in chunk.columns:
        _numeric(chunk, schema.RATING, what, log,
                 fix="ratings must be finite numbers (e.g. 4 or 4.5); leave the cell empty if unknown")
    if schema.WEIGHT in chunk.columns:
        _numeric(chunk, schema.WEIGHT, what, log,
                 fix=f"weights must be non-negative numbers up to {MAX_MAGNITUDE:g} (e.g. 1)")
        log.rows(chunk, chunk[schema.WEIGHT] < 0, what=what, column=schema.WEIGHT,
                 message=lambda r: f"weight {r[schema.WEIGHT]} is negative", fix="weights must be non-negative numbers")
        chunk[schema.WEIGHT] = chunk[schema.WEIGHT].fillna(1.0)
    return chunk


def template_fields(template: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as exc:
        raise DataError(Problem(f"text template {template!r} is not a valid format string: {exc}",
                                fix="use {column} placeholders, e.g. \"{title}. {categories}\"")) from None


def build_text(items: pd.DataFrame, template: str) -> pd.Series:
    """Fills the template per item; empty fields vanish with their separators."""
    fields = template_fields(template)
    values = {f: items[f].where(~_blank(items[f]), "").astype(str).str.strip() for f in fields}

    def render(i: int) -> str:
        text = template.format(**{f: values[f].iat[i] for f in fields})
        text = " ".join(text.split())
        return text.strip(" .,;:|-")

    return pd.Series([render(i) for i in range(len(items))], index=items.index, dtype=object)


def validate(interactions: pd.DataFrame | Iterable[pd.DataFrame], items: pd.DataFrame,
             users: pd.DataFrame | None = None, *, columns: dict[str, str] | None = None,
             text_template: str = schema.DEFAULT_TEXT_TEMPLATE,
             unknown_items: str = "error") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, Report]:
    """Checks raw tables and returns them in the canonical schema (see ``crossrec.schema``).

    ``interactions`` is a DataFrame or an iterable of chunks of one table (``io.TableChunks``).
    Raises ``DataError`` listing every problem found. ``unknown_items``: "error" fails on
    interactions with no matching item; "drop" removes them and counts them in the report.
    """
    columns = dict(columns or {})
    report = Report()
    log = ProblemLog()
    chunks = iter([interactions] if isinstance(interactions, pd.DataFrame) else interactions)
    inter_cols = schema.INTERACTION_REQUIRED + schema.INTERACTION_OPTIONAL
    first, found = _apply_mapping(next(chunks).copy(), columns, "interactions", inter_cols)
    log.add(found)
    fields = template_fields(text_template)
    items, found = _apply_mapping(items.copy(), columns, "items", schema.ITEM_REQUIRED + tuple(fields))
    log.add(found)

    _check_columns(first, items, text_template, log)
    if users is not None:
        users, found = _apply_mapping(users.copy(), columns, "users", schema.USER_REQUIRED)
        log.add(found + _require_columns(users, schema.USER_REQUIRED, "users"))
    log.raise_if_any()  # the rest assumes the columns exist

    cleaned = [_clean_interactions(first, log)]
    for chunk in chunks:  # later chunks of the same file: same mapping; a JSON chunk may lack a column
        chunk = _apply_mapping(chunk, columns, "interactions", inter_cols)[0]  # its problems: the first chunk's
        chunk = chunk.assign(**{c: np.nan for c in first.columns if c not in chunk.columns})
        cleaned.append(_clean_interactions(chunk, log))
    interactions = cleaned[0] if len(cleaned) == 1 else pd.concat(cleaned, ignore_index=True)
    del cleaned

    items = _clean_items(items, text_template, report, log)
    if users is not None:
        _clean_ids(users, schema.USER_REQUIRED, "users", log)
        log.rows(users, users.duplicated(schema.USER_ID, keep="first"), what="users", column=schema.USER_ID,
                 message=lambda r: f"user {r[schema.USER_ID]!r} appears more than once", fix="keep one row per user")
    log.raise_if_any()

    interactions = _check_references(interactions, items, unknown_items, report)
    return interactions, items, users, report


def validate_items(items: pd.DataFrame, *, columns: dict[str, str] | None = None,
                   text_template: str = schema.DEFAULT_TEXT_TEMPLATE) -> pd.DataFrame:
    """An items table alone (``crossrec catalogue add``), checked as ``validate`` checks items:
    the required and template columns, ids, a non-empty text of bounded length, one row per item
    key (rows with the same key and text merged). Raises ``DataError`` listing every problem."""
    log = ProblemLog()
    fields = template_fields(text_template)
    items, found = _apply_mapping(items.copy(), dict(columns or {}), "items", schema.ITEM_REQUIRED + tuple(fields))
    log.add(found + _require_columns(items, schema.ITEM_REQUIRED, "items"))
    for name in fields:
        if name not in items.columns:
            log.add(Problem(f"the text template {text_template!r} uses '{{{name}}}', but the items have no column "
                            f"'{name}' (columns present: {_present(items)})", file=file_of(items, "items"),
                            column=name, fix="add the column, or set data.text_template to columns the items have"))
    log.raise_if_any()
    items = _clean_items(items, text_template, Report(), log)
    log.raise_if_any()
    return items


def _check_columns(interactions: pd.DataFrame, items: pd.DataFrame, text_template: str, log: ProblemLog) -> None:
    """The required columns, an order column, and every column the text template names."""
    log.add(_require_columns(interactions, schema.INTERACTION_REQUIRED, "interactions"))
    if not any(c in interactions.columns for c in schema.ORDER_COLUMNS):
        log.add(Problem(
            "missing an order column: need 'timestamp' (epoch seconds or ISO 8601) or 'seq_pos' "
            f"(columns present: {_present(interactions)})", file=file_of(interactions, "interactions"),
            column=schema.TIMESTAMP,
            fix="add one of them, or map yours: data.columns.timestamp: <column>"))
    log.add(_require_columns(items, schema.ITEM_REQUIRED, "items"))
    for name in template_fields(text_template):
        if name not in items.columns:
            close = _close_column(name, items)
            log.add(Problem(
                f"the text template {text_template!r} uses '{{{name}}}', but the items have no column "
                f"'{name}' (columns present: {_present(items)})", file=file_of(items, "items"),
                column=name,
                fix=(f"rename '{close}' to '{name}', or " if close else "") +
                    "set the text template to columns the items have: data.text_template (CLI: "
                    "--text-template), e.g. '{" + (close or "<column>") + "}'"))


def _clean_items(items: pd.DataFrame, text_template: str, report: Report, log: ProblemLog) -> pd.DataFrame:
    """Clean ids, the text column built from the template (never empty), one row per item key."""
    fields = template_fields(text_template)
    _clean_ids(items, schema.ITEM_REQUIRED, "items", log)
    items[schema.TEXT] = build_text(items, text_template)
    log.rows(items, items[schema.TEXT].str.len() > MAX_TEXT_CHARS, what="items",
             column=fields[0] if len(fields) == 1 else None,
             message=lambda r: f"item {r[schema.ITEM_ID]!r} ({r[schema.DOMAIN]}) has a text of "
                               f"{len(r[schema.TEXT]):,} characters (at most {MAX_TEXT_CHARS:,})",
             fix="shorten the item's title/description, or use a text template of shorter columns")
    log.rows(items, items[schema.TEXT].str.strip() == "", what="items",
             column=fields[0] if len(fields) == 1 else None,
             message=lambda r: f"item {r[schema.ITEM_ID]!r} ({r[schema.DOMAIN]}) has no text "
                               f"(template {text_template!r} gives an empty string)",
             fix="give every item a non-empty title/text, or remove the item")
    _duplicate_items(items, report, log)
    return items.drop_duplicates(list(schema.ITEM_KEY), keep="first")


def _duplicate_items(items: pd.DataFrame, report: Report, log: ProblemLog) -> None:
    key = list(schema.ITEM_KEY)
    dup = items.duplicated(key, keep=False)
    if not dup.any():
        return
    group = items[dup]
    n_texts = group.groupby(key)[schema.TEXT].transform("nunique")
    conflicting = group[n_texts > 1]
    same = int(items.duplicated(key, keep="first").sum()) - int(conflicting.duplicated(key).sum())
    if same:
        report.dropped_duplicate_items = same
        report.notes.append(f"{same} duplicate item rows with identical text were merged")
    if conflicting.empty:
        return
    first = conflicting.drop_duplicates(key, keep="first").set_index(key)
    later = conflicting.duplicated(key, keep="first")
    mask = pd.Series(False, index=items.index)
    mask[conflicting.index[later.to_numpy()]] = True

    def message(r) -> str:
        other = first.loc[(r[schema.DOMAIN], r[schema.ITEM_ID])]
        where = f"row {int(other[schema.SOURCE_ROW])}" if schema.SOURCE_ROW in other else "another row"
        return (f"item {r[schema.ITEM_ID]!r} ({r[schema.DOMAIN]}) has text {r[schema.TEXT]!r} here "
                f"but {other[schema.TEXT]!r} in {where}")

    log.rows(items, mask, what="items", column=schema.ITEM_ID, message=message,
             fix="one (domain, item_id) must have one text: fix or remove one of the rows "
                 "(the same id in two domains is fine: those are two items)")


def _check_references(interactions: pd.DataFrame, items: pd.DataFrame, policy: str,
                      report: Report) -> pd.DataFrame:
    item_domains = set(items[schema.DOMAIN].unique())
    missing_domains = sorted(set(interactions[schema.DOMAIN].unique()) - item_domains)
    if missing_domains:
        raise DataError([Problem(
            f"domain '{d}' has {int((interactions[schema.DOMAIN] == d).sum())} interactions but no items",
            file=file_of(items, "items"), column=schema.DOMAIN,
            fix=f"add the items of domain '{d}' to the items file (with their text), or check the domain's spelling "
                f"(domains with items: {', '.join(sorted(item_domains))})") for d in missing_domains])
    keys = pd.MultiIndex.from_frame(interactions[list(schema.ITEM_KEY)])
    known = keys.isin(pd.MultiIndex.from_frame(items[list(schema.ITEM_KEY)]))
    unknown = ~known
    if not unknown.any():
        return interactions
    if policy == "drop":
        n = int(unknown.sum())
        report.dropped_unknown_items = n
        report.notes.append(f"{n} interactions referenced unknown items and were dropped")
        return interactions[known].reset_index(drop=True)
    log = ProblemLog()
    log.rows(
        interactions, unknown, what="interactions", column=schema.ITEM_ID,
        message=lambda r: f"item {r[schema.ITEM_ID]!r} of domain '{r[schema.DOMAIN]}' is not in the items table",
        fix="add the item to the items file, or set data.unknown_items: drop (CLI: --unknown-items drop) "
            "to drop such interactions and report their count")
    log.raise_if_any()
    return interactions
