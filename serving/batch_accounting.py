"""The candidates job's books: every query ends as exactly one list, every list's rows are
written, every bad row is a dead letter. The pipeline counts these itself (a Beam
``CombinePerKey`` over the data, not metrics counters, which a runner may drop or double on
retries), and after the run the counts are checked against the files it wrote. A count that
does not add up fails the job: its output is incomplete and must not be used."""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from crossrec.errors import CrossrecInputError

COUNTS = ("queries", "users_scored", "cold_start_users", "unknown_users", "rows", "dead_letters")
COUNTS_FILE = "counts.jsonl"


class IncompleteOutput(CrossrecInputError):
    """A batch job whose counts do not add up: rows were lost between its steps."""


def list_counts(element) -> list[tuple[str, int]]:
    """((user, domain), result) -> what it adds to the books: one list, its rows, and whether the
    user is a cross-domain cold start or unknown to the model."""
    _, result = element
    out = [("users_scored", 1), ("rows", len(result["item_ids"]))]
    if result["history_known"] == 0:
        out.append(("unknown_users", 1))
    elif result["history_in_domain"] == 0:
        out.append(("cold_start_users", 1))
    return out


class CountAll(beam.PTransform):
    """Counts queries, lists, rows and dead letters into ``<output>/counts.jsonl``."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, parts):
        queries, results, dead = parts
        return ((queries | "CountQueries" >> beam.Map(lambda _: ("queries", 1)),
                 results | "CountLists" >> beam.FlatMap(list_counts),
                 dead | "CountDeadLetters" >> beam.Map(lambda _: ("dead_letters", 1)))
                | "AllCounts" >> beam.Flatten()
                | "SumCounts" >> beam.CombinePerKey(sum)
                | "CountsAsJson" >> beam.MapTuple(lambda name, n: json.dumps({name: n}))
                | "WriteCounts" >> beam.io.WriteToText(FileSystems.join(self.output, COUNTS_FILE),
                                                       shard_name_template="", num_shards=1))


def read_counts(output: str) -> dict[str, int]:
    """The counts the pipeline wrote (0 for what never occurred); the file is removed."""
    path = FileSystems.join(output, COUNTS_FILE)
    counts = dict.fromkeys(COUNTS, 0)
    with FileSystems.open(path) as f:
        for line in f.read().decode().splitlines():
            if line.strip():
                counts.update(json.loads(line))
    FileSystems.delete([path])
    return counts


def parquet_rows(pattern: str) -> int:
    """Rows of every Parquet file matching ``pattern``, from the files' footers."""
    total = 0
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def check_books(counts: dict[str, int], output: str) -> list[str]:
    """What does not add up (empty: the books balance)."""
    problems = []
    if counts["users_scored"] != counts["queries"]:
        problems.append(f"{counts['queries']} queries went in but {counts['users_scored']} lists came out")
    written = parquet_rows(FileSystems.join(output, "candidates-*.parquet"))
    if written != counts["rows"]:
        problems.append(f"the lists hold {counts['rows']} candidate rows but {written} were written")
    dead = parquet_rows(FileSystems.join(output, "dead_letter-*.parquet"))
    if dead != counts["dead_letters"]:
        problems.append(f"{counts['dead_letters']} rows were dead-lettered but {dead} dead letters were written")
    return problems
