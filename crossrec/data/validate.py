"""Turns raw tables into the canonical schema, checking every rule on the way.

All problems found are gathered and raised together as one ``DataError`` whose lines each name
the file, the row, the column and the fix. Nothing is written by anyone until this passes.
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crossrec import schema
from crossrec.errors import DataError, Problem

MAX_ROWS_PER_RULE = 5  # rows quoted per rule; the rest are counted


@dataclass
class Report:
    """What validation changed or noticed without failing (shown by the CLI)."""

    notes: list[str] = field(default_factory=list)
    dropped_unknown_items: int = 0
    dropped_duplicate_items: int = 0


def _file_of(frame: pd.DataFrame, what: str) -> str:
    if schema.SOURCE_FILE in frame.columns and len(frame):
        files = frame[schema.SOURCE_FILE].astype(str).unique()
        return files[0] if len(files) == 1 else f"{what} files"
    return f"{what} table"


def _row_problems(frame: pd.DataFrame, mask: pd.Series, *, what: str, column: str | None,
                  message, fix: str) -> list[Problem]:
    """One Problem per offending row (first few), plus one counting the rest."""
    bad = frame[mask.to_numpy()]
    problems = []
    for _, row in bad.head(MAX_ROWS_PER_RULE).iterrows():
        line = row.get(schema.SOURCE_LINE)
        problems.append(Problem(
            message(row) if callable(message) else message,
            file=str(row.get(schema.SOURCE_FILE, f"{what} table")),
            row=int(row[schema.SOURCE_ROW]) if schema.SOURCE_ROW in row else None,
            line=int(line) if line is not None and not pd.isna(line) else None,
            column=column, fix=fix))
    if len(bad) > MAX_ROWS_PER_RULE:
        problems.append(Problem(f"... and {len(bad) - MAX_ROWS_PER_RULE} more rows with the same problem",
                                file=_file_of(frame, what), column=column))
    return problems


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
                f"which the {what} file does not have", file=_file_of(frame, what), column=source,
                fix=f"fix data.columns.{target} (columns present: {_present(frame)})"))
    return frame.rename(columns=rename), problems


def _present(frame: pd.DataFrame) -> str:
    return ", ".join(c for c in frame.columns if c not in schema.BOOKKEEPING)


def _require_columns(frame: pd.DataFrame, required, what: str) -> list[Problem]:
    problems = []
    present = [c for c in frame.columns if c not in schema.BOOKKEEPING]
    for name in required:
        if name not in frame.columns:
            close = difflib.get_close_matches(name, present, n=1, cutoff=0.5)
            if close:
                fix = (f"rename column '{close[0]}' to '{name}', or map it: data.columns.{name}: {close[0]} "
                       f"(CLI: --column {name}={close[0]})")
            else:
                fix = f"add the column, or map an existing one: data.columns.{name}: <column>"
            problems.append(Problem(f"missing required column '{name}' (columns present: {', '.join(present)})",
                                    file=_file_of(frame, what), column=name, fix=fix))
    return problems


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(str).str.strip() == "")


def _clean_ids(frame: pd.DataFrame, columns, what: str) -> tuple[pd.DataFrame, list[Problem]]:
    problems = []
    for column in columns:
        blank = _blank(frame[column])
        if blank.any():
            problems += _row_problems(frame, blank, what=what, column=column,
                                      message=f"{column} is empty",
                                      fix=f"give every row a {column}, or delete the row")
        frame[column] = frame[column].astype(str).str.strip()
    return frame, problems


# The largest magnitude a rating or weight may have: beyond it a loss overflows float32 (a weight
# of 1e300 made every embedding NaN). Timestamps may be seconds or milliseconds; beyond 2^53 they
# are no longer exact integers.
MAX_MAGNITUDE = 1e6
MAX_TIMESTAMP = 2.0 ** 53


def _out_of_range(values: pd.Series, limit: float) -> pd.Series:
    """Numbers that are not finite or beyond ``limit`` in magnitude (NaN = blank is not flagged)."""
    return values.notna() & ~(values.abs() <= limit)


def _numeric(frame: pd.DataFrame, column: str, what: str, *, fix: str) -> list[Problem]:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & ~_blank(raw)
    problems = []
    if bad.any():
        problems = _row_problems(frame, bad, what=what, column=column,
                                 message=lambda r: f"{column} {r[column]!r} is not a number", fix=fix)
    absurd = _out_of_range(values, MAX_MAGNITUDE)
    if absurd.any():
        problems += _row_problems(frame, absurd, what=what, column=column,
                                  message=lambda r: f"{column} {r[column]!r} is not a finite number of at most "
                                                    f"{MAX_MAGNITUDE:g} in magnitude", fix=fix)
    frame[column] = values.where(~absurd).astype("float64")
    return problems


def _timestamps(frame: pd.DataFrame, what: str) -> list[Problem]:
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
    problems = []
    if absurd.any():
        problems += _row_problems(frame, absurd, what=what, column=schema.TIMESTAMP,
                                  message=lambda r: f"timestamp {r[schema.TIMESTAMP]!r} is not a finite time",
                                  fix="use epoch seconds (e.g. 1700000000), epoch milliseconds or ISO 8601")
        seconds = seconds.where(~absurd, 0.0)
    bad = seconds.isna()
    if bad.any():
        problems = _row_problems(
            frame, bad, what=what, column=schema.TIMESTAMP,
            message=lambda r: (f"timestamp {r[schema.TIMESTAMP]!r} is not a time" if not _blank(pd.Series([r[schema.TIMESTAMP]])).iloc[0]
                               else "timestamp is empty"),
            fix="use epoch seconds (e.g. 1700000000) or ISO 8601 (e.g. 2024-03-01T12:00:00Z)")
    frame[schema.TIMESTAMP] = seconds.fillna(0).astype("int64")
    return problems


def _seq_pos(frame: pd.DataFrame, what: str) -> list[Problem]:
    values = pd.to_numeric(frame[schema.SEQ_POS], errors="coerce")
    bad = values.isna() | (values != values.round()) | _out_of_range(values, MAX_TIMESTAMP)
    values = values.where(~bad)
    problems = []
    if bad.any():
        problems = _row_problems(frame, bad, what=what, column=schema.SEQ_POS,
                                 message=lambda r: f"seq_pos {r[schema.SEQ_POS]!r} is not a whole number",
                                 fix="give each interaction its integer position in the user's history")
    frame[schema.SEQ_POS] = values.fillna(0).astype("int64")
    return problems


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


def validate(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None = None, *,
             columns: dict[str, str] | None = None, text_template: str = schema.DEFAULT_TEXT_TEMPLATE,
             unknown_items: str = "error") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, Report]:
    """Checks raw tables and returns them in the canonical schema (see ``crossrec.schema``).

    Raises ``DataError`` listing every problem found. ``unknown_items``: "error" fails on
    interactions with no matching item; "drop" removes them and counts them in the report.
    """
    columns = dict(columns or {})
    report = Report()
    problems: list[Problem] = []
    inter_cols = schema.INTERACTION_REQUIRED + schema.INTERACTION_OPTIONAL
    interactions, found = _apply_mapping(interactions.copy(), columns, "interactions", inter_cols)
    problems += found
    fields = template_fields(text_template)
    items, found = _apply_mapping(items.copy(), columns, "items", schema.ITEM_REQUIRED + tuple(fields))
    problems += found

    problems += _require_columns(interactions, schema.INTERACTION_REQUIRED, "interactions")
    if not any(c in interactions.columns for c in schema.ORDER_COLUMNS):
        problems.append(Problem(
            "missing an order column: need 'timestamp' (epoch seconds or ISO 8601) or 'seq_pos' "
            f"(columns present: {_present(interactions)})", file=_file_of(interactions, "interactions"),
            column=schema.TIMESTAMP,
            fix="add one of them, or map yours: data.columns.timestamp: <column>"))
    problems += _require_columns(items, schema.ITEM_REQUIRED, "items")
    for name in fields:
        if name not in items.columns:
            close = difflib.get_close_matches(name, _present(items).split(", "), n=1, cutoff=0.5)
            problems.append(Problem(
                f"the text template {text_template!r} uses '{{{name}}}', but the items have no column "
                f"'{name}' (columns present: {_present(items)})", file=_file_of(items, "items"),
                column=name,
                fix=(f"rename '{close[0]}' to '{name}' or " if close else "") +
                    "change data.text_template to use existing columns"))
    if users is not None:
        users, found = _apply_mapping(users.copy(), columns, "users", schema.USER_REQUIRED)
        problems += found + _require_columns(users, schema.USER_REQUIRED, "users")
    if problems:  # the rest assumes the columns exist
        raise DataError(problems)

    interactions, found = _clean_ids(interactions, schema.INTERACTION_REQUIRED, "interactions")
    problems += found
    if schema.TIMESTAMP in interactions.columns:
        problems += _timestamps(interactions, "interactions")
    if schema.SEQ_POS in interactions.columns:
        problems += _seq_pos(interactions, "interactions")
    if schema.RATING in interactions.columns:
        problems += _numeric(interactions, schema.RATING, "interactions",
                             fix="ratings must be finite numbers (e.g. 4 or 4.5); leave the cell empty if unknown")
    if schema.WEIGHT in interactions.columns:
        problems += _numeric(interactions, schema.WEIGHT, "interactions",
                             fix=f"weights must be non-negative numbers up to {MAX_MAGNITUDE:g} (e.g. 1)")
        negative = interactions[schema.WEIGHT] < 0
        if negative.any():
            problems += _row_problems(interactions, negative, what="interactions", column=schema.WEIGHT,
                                      message=lambda r: f"weight {r[schema.WEIGHT]} is negative",
                                      fix="weights must be non-negative numbers")
        interactions[schema.WEIGHT] = interactions[schema.WEIGHT].fillna(1.0)

    items, found = _clean_ids(items, schema.ITEM_REQUIRED, "items")
    problems += found
    items[schema.TEXT] = build_text(items, text_template)
    empty = items[schema.TEXT].str.strip() == ""
    if empty.any():
        problems += _row_problems(items, empty, what="items", column=fields[0] if len(fields) == 1 else None,
                                  message=lambda r: f"item {r[schema.ITEM_ID]!r} ({r[schema.DOMAIN]}) has no text "
                                                    f"(template {text_template!r} gives an empty string)",
                                  fix="give every item a non-empty title/text, or remove the item")
    problems += _duplicate_items(items, report)
    items = items.drop_duplicates(list(schema.ITEM_KEY), keep="first")

    if users is not None:
        users, found = _clean_ids(users, schema.USER_REQUIRED, "users")
        problems += found
        dup = users.duplicated(schema.USER_ID, keep="first")
        if dup.any():
            problems += _row_problems(users, dup, what="users", column=schema.USER_ID,
                                      message=lambda r: f"user {r[schema.USER_ID]!r} appears more than once",
                                      fix="keep one row per user")

    if problems:
        raise DataError(problems)

    interactions = _check_references(interactions, items, unknown_items, report)
    return interactions, items, users, report


def _duplicate_items(items: pd.DataFrame, report: Report) -> list[Problem]:
    key = list(schema.ITEM_KEY)
    dup = items.duplicated(key, keep=False)
    if not dup.any():
        return []
    group = items[dup]
    n_texts = group.groupby(key)[schema.TEXT].transform("nunique")
    conflicting = group[n_texts > 1]
    same = int(items.duplicated(key, keep="first").sum()) - int(conflicting.duplicated(key).sum())
    if same:
        report.dropped_duplicate_items = same
        report.notes.append(f"{same} duplicate item rows with identical text were merged")
    if conflicting.empty:
        return []
    first = conflicting.drop_duplicates(key, keep="first").set_index(key)
    later = conflicting.duplicated(key, keep="first")
    mask = pd.Series(False, index=items.index)
    mask[conflicting.index[later.to_numpy()]] = True

    def message(r) -> str:
        other = first.loc[(r[schema.DOMAIN], r[schema.ITEM_ID])]
        where = f"row {int(other[schema.SOURCE_ROW])}" if schema.SOURCE_ROW in other else "another row"
        return (f"item {r[schema.ITEM_ID]!r} ({r[schema.DOMAIN]}) has text {r[schema.TEXT]!r} here "
                f"but {other[schema.TEXT]!r} in {where}")

    return _row_problems(items, mask, what="items", column=schema.ITEM_ID, message=message,
                         fix="one (domain, item_id) must have one text: fix or remove one of the rows "
                             "(the same id in two domains is fine: those are two items)")


def _check_references(interactions: pd.DataFrame, items: pd.DataFrame, policy: str,
                      report: Report) -> pd.DataFrame:
    item_domains = set(items[schema.DOMAIN].unique())
    missing_domains = sorted(set(interactions[schema.DOMAIN].unique()) - item_domains)
    if missing_domains:
        raise DataError([Problem(
            f"domain '{d}' has {int((interactions[schema.DOMAIN] == d).sum())} interactions but no items",
            file=_file_of(items, "items"), column=schema.DOMAIN,
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
    raise DataError(_row_problems(
        interactions, pd.Series(unknown, index=interactions.index), what="interactions", column=schema.ITEM_ID,
        message=lambda r: f"item {r[schema.ITEM_ID]!r} of domain '{r[schema.DOMAIN]}' is not in the items table",
        fix="add the item to the items file, or set data.unknown_items: drop (CLI: --unknown-items drop) "
            "to drop such interactions and report their count"))
