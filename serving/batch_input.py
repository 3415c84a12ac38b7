"""The candidates job's input: what it holds, counted before the pipeline, and read one Parquet
row group per element.

**Counted first.** Before a pipeline is built, ``survey`` reads the input's Parquet footers (rows
and row groups of every file) and, for an interactions table, its ``user_id`` column alone (the
distinct users). The job's books close against these numbers (``serving.batch_accounting``):
every input row must reach the step that parses it and, for an interactions table, every user
must become one history; a run that lost rows anywhere before that fails, with the numbers.

**Read by row group.** The pipeline reads the files the survey listed, one ``(file, row group)``
element each, spread over the workers by a ``Reshuffle``, and turns each row group into rows
``READ_BATCH_ROWS`` at a time: memory is bounded by one row group's Arrow table, where Beam's
``ReadFromParquet`` turns a whole row group into Python lists at once, and what is read is
exactly what was surveyed (the pipeline counts it, so the books say whether rows were lost in the
read or after it).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from crossrec import schema
from crossrec.errors import ConfigError

READ_BATCH_ROWS = 8192  # rows converted to Python dicts at a time inside one row group


@dataclass(frozen=True)
class InputSurvey:
    """What the input holds, read from the files themselves before the pipeline runs."""

    files: int
    rows: int
    users: int | None  # distinct user ids (an interactions table; a null id counts as one); None for a users table
    pieces: tuple[tuple[str, int], ...]  # (file, row group), in file order

    def as_dict(self) -> dict:
        return {"files": self.files, "rows": self.rows, "users": self.users, "row_groups": len(self.pieces)}


@contextmanager
def _parquet(path: str):
    """The Parquet file at ``path`` (any Beam file system), closed after use."""
    with FileSystems.open(path) as f:
        try:
            parquet = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"{path}: not a readable Parquet file ({exc}); write the input with pandas' "
                              "to_parquet or pyarrow") from None
        yield parquet


def survey(source: str, interactions: bool) -> InputSurvey:
    """Rows and row groups of every file matching ``source`` (a path, a glob or a Beam file
    system URL), and for an interactions table the number of distinct users."""
    matches = sorted(m.path for m in FileSystems.match([source])[0].metadata_list)
    if not matches:
        raise ConfigError(f"{source}: no input file matches")
    rows, pieces, users = 0, [], set()
    for path in matches:
        with _parquet(path) as parquet:
            rows += parquet.metadata.num_rows
            pieces += [(path, group) for group in range(parquet.metadata.num_row_groups)]
            if interactions:
                users |= _user_ids(path, parquet)
    return InputSurvey(len(matches), rows, len(users) if interactions else None, tuple(pieces))


def _user_ids(path: str, parquet: pq.ParquetFile) -> set:
    """The file's distinct user ids, as the pipeline's ``GroupByKey`` sees them (Python values; one
    row group's column in memory at a time)."""
    if schema.USER_ID not in parquet.schema_arrow.names:
        raise ConfigError(f"{path}: no {schema.USER_ID!r} column (it has {parquet.schema_arrow.names}); an "
                          "interactions table needs user_id, item_id, domain and timestamp or seq_pos")
    distinct = set()
    for group in range(parquet.metadata.num_row_groups):
        distinct.update(pc.unique(parquet.read_row_group(group, columns=[schema.USER_ID]).column(0)).to_pylist())
    return distinct


def read_row_group(piece: tuple[str, int]):
    """One ``(file, row group)`` -> its rows as dicts, ``READ_BATCH_ROWS`` at a time."""
    path, group = piece
    with _parquet(path) as parquet:
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[group]):
            yield from batch.to_pylist()


class ReadRowGroups(beam.PTransform):
    """The rows of the surveyed files: one element per row group, spread over the workers."""

    def __init__(self, input_survey: InputSurvey):
        super().__init__()
        self.pieces = list(input_survey.pieces)

    def expand(self, pbegin):
        return (pbegin
                | "RowGroups" >> beam.Create(self.pieces, reshuffle=False)
                | "SpreadRowGroups" >> beam.Reshuffle()
                | "ReadRowGroup" >> beam.FlatMap(read_row_group))
