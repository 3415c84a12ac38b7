"""The candidates job's books: every input row reaches the job (against what the files hold,
counted before the pipeline by ``serving.batch_input.survey``), every query ends as exactly one
list, every list's rows are written, every bad row is a dead letter. The pipeline counts these
itself (a Beam ``CombinePerKey`` over the data, not metrics counters, which a runner may drop or double on
retries), and after the run the counts are checked against the files it wrote. A count that
does not add up fails the job: its output is incomplete and must not be used."""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from crossrec.errors import CrossrecInputError
from serving.batch_input import InputSurvey

COUNTS = ("rows_read", "input_rows", "input_users", "queries", "users_scored", "cold_start_users", "unknown_users",
          "rows", "dead_letters")
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
    """Counts input rows and users reached, queries, lists, rows and dead letters into
    ``<output>/counts.jsonl``; its input is (queries, results, dead letters, tallies), the tallies
    already ``(name, n)`` pairs."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, parts):
        queries, results, dead, tallies = parts
        return ((tallies,
                 queries | "CountQueries" >> beam.Map(lambda _: ("queries", 1)),
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


def check_books(counts: dict[str, int], output: str, surveyed: InputSurvey) -> list[str]:
    """What does not add up (empty: the books balance)."""
    problems = []
    if counts["input_rows"] != surveyed.rows:
        where = ""
        if surveyed.users is not None:  # an interactions table: read, then grouped by user in Beam's shuffle
            where = (f" (all {surveyed.rows} were read: lost in the shuffle that groups them by user)"
                     if counts["rows_read"] == surveyed.rows else f" ({counts['rows_read']} were read)")
        problems.append(f"the input holds {surveyed.rows} rows ({surveyed.files} file(s)) but {counts['input_rows']} "
                        f"reached the job: {surveyed.rows - counts['input_rows']} rows lost{where}")
    if surveyed.users is not None and counts["input_users"] != surveyed.users:
        problems.append(f"the input holds {surveyed.users} users but {counts['input_users']} histories were built: "
                        f"{surveyed.users - counts['input_users']} users lost")
    if counts["users_scored"] != counts["queries"]:
        problems.append(f"{counts['queries']} queries went in but {counts['users_scored']} lists came out")
    written = parquet_rows(FileSystems.join(output, "candidates-*.parquet"))
    if written != counts["rows"]:
        problems.append(f"the lists hold {counts['rows']} candidate rows but {written} were written")
    dead = parquet_rows(FileSystems.join(output, "dead_letter-*.parquet"))
    if dead != counts["dead_letters"]:
        problems.append(f"{counts['dead_letters']} rows were dead-lettered but {dead} dead letters were written")
    return problems
