"""Gathering validation problems, one rule at a time, over a table read whole or in chunks.

Each rule quotes its first few offending rows (file, row, line, column, fix) and counts the
rest, however many chunks the rows came from; ``raise_if_any`` raises them as one ``DataError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from crossrec import schema
from crossrec.errors import DataError, Problem

MAX_ROWS_PER_RULE = 5  # rows quoted per rule; the rest are counted


def file_of(frame: pd.DataFrame, what: str) -> str:
    """The file a table came from ("<what> files" for several, "<what> table" for none)."""
    if schema.SOURCE_FILE in frame.columns and len(frame):
        files = frame[schema.SOURCE_FILE].astype(str).unique()
        return files[0] if len(files) == 1 else f"{what} files"
    return f"{what} table"


@dataclass
class _Rule:
    quoted: list[Problem] = field(default_factory=list)
    count: int = 0
    files: set[str] = field(default_factory=set)
    column: str | None = None
    what: str = ""


class ProblemLog:
    """Problems found so far, in the order their rules first fired."""

    def __init__(self) -> None:
        self._entries: list[Problem | _Rule] = []
        self._rules: dict[tuple, _Rule] = {}

    def add(self, problems: Problem | list[Problem]) -> None:
        """Problems about a whole table (a missing column, a bad mapping)."""
        self._entries += [problems] if isinstance(problems, Problem) else list(problems)

    def rows(self, frame: pd.DataFrame, mask: pd.Series, *, what: str, column: str | None,
             message: str | Callable[[pd.Series], str], fix: str) -> None:
        """The rows of ``frame`` where ``mask`` holds break one rule (the rule is named by its
        table, column, fix and message: the same call on the next chunk adds to the same rule)."""
        mask = mask.to_numpy() if isinstance(mask, pd.Series) else mask
        bad = frame[mask]
        if bad.empty:
            return
        key = (what, column, fix, getattr(message, "__code__", message))
        rule = self._rules.get(key)
        if rule is None:
            rule = self._rules[key] = _Rule(column=column, what=what)
            self._entries.append(rule)
        rule.count += len(bad)
        rule.files.add(file_of(bad, what))
        for _, row in bad.head(MAX_ROWS_PER_RULE - len(rule.quoted)).iterrows():
            line = row.get(schema.SOURCE_LINE)
            rule.quoted.append(Problem(
                message(row) if callable(message) else message,
                file=str(row.get(schema.SOURCE_FILE, f"{what} table")),
                row=int(row[schema.SOURCE_ROW]) if schema.SOURCE_ROW in row else None,
                line=int(line) if line is not None and not pd.isna(line) else None,
                column=column, fix=fix))

    @property
    def problems(self) -> list[Problem]:
        out = []
        for entry in self._entries:
            if isinstance(entry, Problem):
                out.append(entry)
                continue
            out += entry.quoted
            if entry.count > len(entry.quoted):
                files = sorted(entry.files)
                out.append(Problem(f"... and {entry.count - len(entry.quoted)} more rows with the same problem",
                                   file=files[0] if len(files) == 1 else f"{entry.what} files",
                                   column=entry.column))
        return out

    def __bool__(self) -> bool:
        return bool(self._entries)

    def raise_if_any(self) -> None:
        if self._entries:
            raise DataError(self.problems)
