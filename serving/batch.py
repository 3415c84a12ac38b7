"""``crossrec candidates``: top-K candidates for every user of a table, on Apache Beam.

The same code runs on one machine (Beam's local FnApiRunner, chosen explicitly, in memory with one
worker: ``local_runner``) and on a cluster (``--runner`` Dataflow, Flink, Spark: Beam pipeline
options pass through). It reads

- a users table (Parquet): ``user_id``, ``history_item_ids`` and ``history_domains`` (lists, oldest
  first) and optionally ``domain`` (the domain to recommend from; without it, every ``--domains``);
- or the interactions table itself (``--interactions``, canonical schema), from which each
  user's history is built (ordered by ``timestamp`` or ``seq_pos``);

runs the exported ``retrieval`` SavedModel (and, with ``--rank-top N``, the ``recommender``
model, whose top N of the merged and ranked candidate sources head each list; with ``--feed N``
the recommender's ``feed`` alone, one list across every domain per user, ``serving.batch_feed``)
through ``RunInference`` with the handlers of ``serving.batch_handlers`` (``ModelHandler``s over
``tf.saved_model.load`` that score whole batches), keyed by user, and writes Parquet shards
``candidates-*.parquet`` with ``user_id, domain, rank, item_id, score, model_name,
model_version``. Bad rows (no user id, unknown domain, malformed history) go to
``dead_letter-*.parquet`` with the reason; the run goes on. With ``--rank-top`` retrieval and the
recommender run on the same batch (one step, no join). ``summary.json`` counts queries, lists,
cross-domain cold starts (no history in the target domain), users unknown to the model (no history
item it knows), candidate rows and dead letters, counted by the pipeline and checked against the
files written (``serving.batch_accounting``): a count that does not add up fails the job.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from crossrec import schema
from crossrec.errors import ConfigError
from crossrec.quiet import quiet_logs
from serving.batch_accounting import CountAll, IncompleteOutput, check_books, read_counts
from serving.batch_feed import FEED_DOMAIN, FeedHandler, FeedRequest
from serving.batch_handlers import Query, RecommenderHandler, SavedModelHandler, ServedModel
from serving.batch_input import InputSurvey, ReadRowGroups, survey

CANDIDATES_SCHEMA = pa.schema([("user_id", pa.string()), ("domain", pa.string()), ("rank", pa.int32()),
                               ("item_id", pa.string()), ("score", pa.float32()), ("model_name", pa.string()),
                               ("model_version", pa.int64())])
DEAD_LETTER_SCHEMA = pa.schema([("user_id", pa.string()), ("reason", pa.string()), ("row", pa.string())])


# --- parsing and checking rows -------------------------------------------------------------------------

def _dead(user, reason: str, row) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput("dead", {"user_id": None if user is None else str(user), "reason": reason,
                                             "row": json.dumps(row, default=str)[:2000]})


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value if isinstance(value, list | tuple) else None


class ParseUsers(beam.DoFn):
    """A users-table row -> one ``((user, domain), Query)`` per target domain, or a dead letter
    with the reason."""

    def __init__(self, domains: list[str], known_domains: list[str], feed: bool = False, tally: bool = False):
        self.domains = domains
        self.known = set(known_domains)
        self.feed = feed  # one query per user, for every domain at once (FEED_DOMAIN)
        self.tally = tally  # count each row as an input row reached (a users table; histories are tallied earlier)

    def process(self, row: dict):
        if self.tally:
            yield beam.pvalue.TaggedOutput("tally", ("input_rows", 1))
        user = row.get(schema.USER_ID)
        if user is None or str(user).strip() == "":
            yield _dead(user, "missing user_id", row)
            return
        items, doms = _as_list(row.get("history_item_ids")), _as_list(row.get("history_domains"))
        if items is None or doms is None:
            yield _dead(user, "malformed history: history_item_ids and history_domains must be lists", row)
            return
        if len(items) != len(doms):
            yield _dead(user, f"malformed history: {len(items)} history_item_ids but {len(doms)} history_domains",
                        row)
            return
        if any(v is None for v in items) or any(v is None for v in doms):
            yield _dead(user, "malformed history: a null item id or domain", row)
            return
        strange = sorted({str(d) for d in doms} - self.known)
        if strange:  # the served models refuse them as they refuse an unknown target domain
            yield _dead(user, f"unknown domain {strange[0]!r} in the history; the model knows {sorted(self.known)}: "
                              "leave other domains' items out of the input", row)
            return
        if self.feed:
            yield (str(user), FEED_DOMAIN), Query(str(user), FEED_DOMAIN, [str(v) for v in items],
                                                  [str(v) for v in doms])
            return
        targets = [row[schema.DOMAIN]] if row.get(schema.DOMAIN) is not None else self.domains
        for domain in targets:
            if domain not in self.known:
                yield _dead(user, f"unknown domain {domain!r}; the model knows {sorted(self.known)}", row)
                continue
            yield (str(user), str(domain)), Query(str(user), str(domain), [str(v) for v in items],
                                                  [str(v) for v in doms])


class HistoryFromInteractions(beam.DoFn):
    """(user, interaction rows) -> the user's history, oldest first, as a users-table row; the
    user and their rows are tallied as input reached."""

    def process(self, element):
        user, rows = element
        rows = list(rows)
        yield beam.pvalue.TaggedOutput("tally", ("input_users", 1))
        yield beam.pvalue.TaggedOutput("tally", ("input_rows", len(rows)))
        order = schema.TIMESTAMP if all(r.get(schema.TIMESTAMP) is not None for r in rows) else schema.SEQ_POS
        try:
            rows.sort(key=lambda r: r[order])
        except (KeyError, TypeError):
            yield _dead(user, f"interactions without a usable {schema.TIMESTAMP} or {schema.SEQ_POS}", rows[:3])
            return
        yield {schema.USER_ID: user, "history_item_ids": [r.get(schema.ITEM_ID) for r in rows],
               "history_domains": [r.get(schema.DOMAIN) for r in rows]}


def to_table(elements, model_name: str, model_version: int, ranked_name: str | None,
             ranked_version: int | None) -> pa.Table:
    """A batch of ((user, domain), result) -> one Arrow table of candidate rows. Whole tables go to
    the Parquet sink: building millions of per-row dicts was most of the pipeline's time."""
    columns = {name: [] for name in CANDIDATES_SCHEMA.names}
    for (user, domain), result in elements:
        n, ranked = len(result["item_ids"]), min(result.get("ranked", 0), len(result["item_ids"]))
        columns["user_id"] += [user] * n
        columns["domain"] += result["domains"] if "domains" in result else [domain] * n  # a feed: each item's
        columns["rank"] += range(1, n + 1)
        columns["item_id"] += result["item_ids"]
        columns["score"] += result["scores"]
        columns["model_name"] += [ranked_name] * ranked + [model_name] * (n - ranked)
        columns["model_version"] += [ranked_version] * ranked + [model_version] * (n - ranked)
    return pa.Table.from_pydict(columns, schema=CANDIDATES_SCHEMA)


# --- the pipeline ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchRequest:
    """What a candidates job asks: its input (exactly one of a users table or an interactions
    table: a path, a glob or a Beam file system URL) and what every user gets."""

    users: str | None = None
    interactions: str | None = None
    k: int = 100  # candidates per (user, domain)
    rank_top: int = 0  # the first this many reordered by the recommender (0: retrieval alone)
    domains: list[str] | None = None  # the target domains (None: every domain the export knows)
    exclude_seen: bool = True
    feed: FeedRequest | None = None  # one feed across every domain per user instead of lists per domain


@dataclass
class CandidatesResult:
    output: str  # a local path or a Beam file system URL
    counts: dict[str, int]
    seconds: float


def run_candidates(model_dir: str | Path, output: str | Path, request: BatchRequest, *, batch_size: int = 1024,
                   pipeline_args: list[str] | None = None, shards: int = 0) -> CandidatesResult:
    """Builds and runs the candidates pipeline; returns where the shards are and the counts.
    ``request.feed``: one feed across every domain per user (``serving.batch_feed``) instead of
    lists per domain (``k``, ``rank_top`` and ``domains`` do not apply)."""
    source, retrieval, ranking, targets, known = _check_request(model_dir, request)
    feed, exclude_seen = request.feed, request.exclude_seen
    surveyed = survey(source, request.interactions is not None)  # what the books must close against
    output = str(output)
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    quiet_logs()  # RunInference's note about PyTorch's memory probe, among others (crossrec.quiet)
    runner, runner_name, pipeline_args = local_runner(list(pipeline_args or []))
    options = PipelineOptions(pipeline_args, save_main_session=False)
    started = time.perf_counter()
    pipeline = beam.Pipeline(runner=runner, options=options)
    keyed, dead, tallies = _read_queries(pipeline, surveyed, request.users is not None, targets, known,
                                         feed is not None)
    step, handler, models = _handler(retrieval, ranking, request, batch_size)
    # ((user, domain), result dict); retrieval and ranking in one step: nothing to join
    results = keyed | step >> RunInference(KeyedModelHandler(handler))
    tables = (results
              | "BatchRows" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
              | "ToTables" >> beam.Map(to_table, *models))
    tables | "WriteCandidates" >> beam.io.WriteToParquetBatched(FileSystems.join(output, "candidates"),
                                                                CANDIDATES_SCHEMA, file_name_suffix=".parquet",
                                                                num_shards=shards)
    dead | "WriteDeadLetters" >> beam.io.WriteToParquet(FileSystems.join(output, "dead_letter"), DEAD_LETTER_SCHEMA,
                                                        file_name_suffix=".parquet", num_shards=1)
    (keyed, results, dead, tallies) | "Count" >> CountAll(output)
    pipeline.run().wait_until_finish()
    counts = read_counts(output)
    problems = check_books(counts, output, surveyed)
    summary = {"input": source, "input_holds": surveyed.as_dict(), "runner": runner_name,
               "retrieval": f"{retrieval.name}/{retrieval.version}",
               "ranking": f"{ranking.name}/{ranking.version}" if ranking else None,
               "k": None if feed else request.k, "rank_top": None if feed else request.rank_top,  # a feed: feed.n
               "feed": vars(feed) if feed else None,
               "exclude_seen": exclude_seen, "counts": counts, "complete": not problems, "problems": problems,
               "seconds": round(time.perf_counter() - started, 2)}
    with FileSystems.create(FileSystems.join(output, "summary.json")) as f:
        f.write(json.dumps(summary, indent=2).encode())
    if problems:
        raise IncompleteOutput(f"the candidates in {output} are incomplete and must not be used: "
                               f"{'; '.join(problems)} (summary.json); run the job again")
    return CandidatesResult(output, counts, time.perf_counter() - started)


def _handler(retrieval, ranking, request: BatchRequest, batch_size: int):
    """(the inference step's name, its model handler, the (name, version) of the model whose
    answers the rows hold and of the ranker that reordered them, None where none did)."""
    feed, exclude_seen = request.feed, request.exclude_seen
    if feed is not None:
        return ("Feed", FeedHandler(ranking, feed, exclude_seen=exclude_seen, max_batch_size=batch_size),
                (ranking.name, ranking.version, None, None))
    handler = SavedModelHandler(retrieval, k=request.k, exclude_seen=exclude_seen, max_batch_size=batch_size)
    if ranking is None:
        return "Retrieve", handler, (retrieval.name, retrieval.version, None, None)
    return ("RetrieveAndRank", RecommenderHandler(handler, ranking, top=request.rank_top, exclude_seen=exclude_seen),
            (retrieval.name, retrieval.version, ranking.name, ranking.version))


def _check_request(model_dir, request: BatchRequest):
    """(input path, retrieval model, recommender model or None, target domains, known domains),
    every argument checked against the export before a pipeline is built."""
    users, interactions, k, rank_top = request.users, request.interactions, request.k, request.rank_top
    domains, feed = request.domains, request.feed
    if feed is not None and (rank_top or domains):
        raise ConfigError("--feed: one list across every domain per user; --rank-top and --domains do not apply")
    if (users is None) == (interactions is None):
        raise ConfigError("give exactly one input: --input users.parquet or --interactions interactions.parquet")
    source = str(users or interactions)  # a path, a glob or a Beam file system URL (kept as text: Path folds "//")
    if not Path(source).exists() and not any(ch in source for ch in "*?[") and "://" not in source:
        raise ConfigError(f"{source}: input not found")
    retrieval = ServedModel.latest(model_dir, "retrieval")
    known = retrieval.metadata.get("domains") or []
    if not known:
        raise ConfigError(f"{retrieval.path}: no domain list in its metadata; re-export it with this crossrec")
    max_k = int(retrieval.metadata.get("max_k") or k)
    if feed is None and not 1 <= k <= max_k:
        raise ConfigError(f"--k {k}: must be between 1 and the export's max_k ({max_k}); re-export with a larger "
                          "export.max_k for more")
    targets = domains or known
    unknown = sorted(set(targets) - set(known))
    if unknown:
        raise ConfigError(f"--domains: unknown {unknown}; the model knows {known}")
    ranking = ServedModel.latest(model_dir, "recommender") if rank_top or feed else None
    if feed is not None:
        feed.check(ranking)
    if ranking is not None and rank_top > int(ranking.metadata.get("max_k") or rank_top):
        raise ConfigError(f"--rank-top {rank_top}: the recommender answers at most {ranking.metadata['max_k']} items; "
                          "ask for fewer or re-export with a larger export.max_k")
    return source, retrieval, ranking, targets, known


def _read_queries(pipeline, surveyed: InputSurvey, is_users: bool, targets, known, feed: bool = False):
    """(keyed queries, dead letters, tallies): ((user, domain), Query) per user and target domain,
    read from a users table or built from an interactions table (``serving.batch_input``: one
    element per row group); rows that cannot be a query go to the dead letters with their reason;
    the tallies count the input rows (and users) that reached the step that parses them and, for
    an interactions table, the rows read before Beam's shuffle groups them by user."""
    if is_users:
        rows = pipeline | "ReadUsers" >> ReadRowGroups(surveyed)
    else:
        read = pipeline | "ReadInteractions" >> ReadRowGroups(surveyed)
        read_tally = read | "CountRead" >> beam.Map(lambda _: ("rows_read", 1))  # before the shuffle
        rows = (read
                | "KeyByUser" >> beam.Map(lambda r: (r.get(schema.USER_ID), r))
                | "GroupByUser" >> beam.GroupByKey()
                | "BuildHistories" >> beam.ParDo(HistoryFromInteractions()).with_outputs("dead", "tally", main="rows"))
        early_dead, early_tally, rows = rows.dead, rows.tally, rows.rows
    parsed = rows | "Check" >> beam.ParDo(ParseUsers(targets, known, feed, tally=is_users)).with_outputs(
        "dead", "tally", main="queries")
    if is_users:
        return parsed.queries, parsed.dead, parsed.tally
    dead = (early_dead, parsed.dead) | "AllDead" >> beam.Flatten()
    tallies = (read_tally, early_tally) | "AllTallies" >> beam.Flatten()
    return parsed.queries, dead, tallies  # few per-row steps: each costs per row


def local_runner(pipeline_args: list[str]):
    """(runner, its name, pipeline args). Without ``--runner``: Beam's FnApiRunner, chosen
    explicitly (Beam >= 2.68's DirectRunner first tries to download and start the Prism runner and
    falls back when offline, so the same command would run on different runners depending on the
    network), in its ``in_memory`` mode with one worker: TensorFlow already spreads each batch
    over every core, and Beam's ``multi_threading`` mode (its gRPC data plane) lost rows in the
    shuffle that builds histories (``bench.batch_stress``: 8 of 20 runs with one worker thread, 3
    of 17 with two, 0 of 20 in memory at the same speed; each caught by the books). A
    ``--direct_num_workers`` above 1 without a mode runs ``multi_threading``, as Beam does. With
    ``--runner``, Beam's choice."""
    given = PipelineOptions(pipeline_args).view_as(StandardOptions).runner
    if given:
        return None, given, pipeline_args
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    direct = PipelineOptions(pipeline_args).view_as(DirectOptions)
    if not any(a.startswith("--direct_num_workers") for a in pipeline_args):
        pipeline_args += ["--direct_num_workers", "1"]
    if not any(a.startswith("--direct_running_mode") for a in pipeline_args):
        several = direct.direct_num_workers != 1  # 0: one per core
        pipeline_args += ["--direct_running_mode", "multi_threading" if several else "in_memory"]
    return FnApiRunner(), "FnApiRunner", pipeline_args
