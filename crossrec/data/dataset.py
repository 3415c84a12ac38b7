"""The validated, canonical dataset that every other part of crossrec consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from crossrec import schema
from crossrec.data import io
from crossrec.data.validate import Report


@dataclass
class Dataset:
    """Interactions, items and optional users in the canonical schema (``crossrec.schema``)."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    report: Report = field(default_factory=Report)

    @property
    def order_column(self) -> str:
        return schema.order_column(self.interactions.columns)

    @property
    def domains(self) -> list[str]:
        return sorted(self.items[schema.DOMAIN].unique())

    def clean(self) -> Dataset:
        """The same data without the readers' bookkeeping columns."""
        return Dataset(io.without_bookkeeping(self.interactions), io.without_bookkeeping(self.items),
                       None if self.users is None else io.without_bookkeeping(self.users), self.report)

    def save(self, directory: str | Path, *, file_format: str = "parquet",
             overwrite: bool = False) -> Path:
        """Writes ``interactions``, ``items`` (and ``users``) atomically into ``directory``."""
        suffix = {"parquet": ".parquet", "csv": ".csv", "csv.gz": ".csv.gz"}[file_format]
        with io.atomic_directory(directory, overwrite=overwrite) as tmp:
            io.write_table(self.interactions, tmp / f"interactions{suffix}")
            io.write_table(self.items, tmp / f"items{suffix}")
            if self.users is not None:
                io.write_table(self.users, tmp / f"users{suffix}")
        return Path(directory)
