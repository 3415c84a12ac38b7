"""What an export is built from: the trained towers (and ranker), their catalogue and config, the
item embeddings, lookups and index (``ExportParts``), and measurements of the index against exact
search on real training queries."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import crossrec.errors
from crossrec.config import Config
from crossrec.experiment import prepare_data
from crossrec.features import Catalogue
from ranking.served_list import ServedListSpec
from serving.index import DomainIndex
from serving.lookups import Lookups


@dataclass
class ExportParts:
    config: Config
    catalogue: Catalogue
    retrieval_model: object
    item_embeddings: np.ndarray
    lookups: Lookups
    index: DomainIndex | None = None
    ranker: object | None = None
    metadata: dict = field(default_factory=dict)
    # the served list as the ranking run chose and stored it (ranking.served_list)
    served_list: ServedListSpec = field(default_factory=ServedListSpec)



def load_parts(retrieval_dir: str | Path, ranking_dir: str | Path | None, config: Config | None = None) -> ExportParts:
    from towers.train import load_trained

    model, catalogue, trained_config = load_trained(retrieval_dir)
    rankers = None
    if ranking_dir is not None:
        from ranking.run_folder import load_ranking

        teacher, student, _ = load_ranking(ranking_dir)
        rankers = (teacher, student)
    return assemble_parts(model, catalogue, config or trained_config, retrieval_dir, rankers, ranking_dir)


def assemble_parts(model, catalogue: Catalogue, config: Config, retrieval_dir: str | Path,
                   rankers: tuple | None = None, ranking_dir: str | Path | None = None) -> ExportParts:
    """The parts of the runs in ``retrieval_dir`` (and ``ranking_dir``) from their trained models
    (the towers, and the rankers as (teacher, student or None)) when the caller holds them already
    (``crossrec catalogue`` just built them: at 1M items loading the rankers again cost 13 s):
    what ``load_parts`` gives after loading them."""
    stored = stored_embeddings(retrieval_dir, catalogue)
    if stored is None:
        embeddings = model.all_item_embeddings()
    else:  # row 0 (padding) is never searched nor read unmasked: the towers' own value, as computed
        embeddings = np.concatenate([np.asarray(model.item_embeddings(np.zeros(1, np.int32)), np.float32), stored])
    parts = ExportParts(config, catalogue, model, embeddings,
                        Lookups(catalogue, embeddings, config.towers.history_length, config.export.quantize),
                        served_list=ServedListSpec.from_config(config, 0.0))  # the ranking run's, below
    summary = Path(retrieval_dir) / "run_summary.json"
    if summary.exists():
        run = json.loads(summary.read_text())
        parts.metadata["data_fingerprint"] = run.get("data_fingerprint")
        parts.metadata["retrieval_metrics"] = run.get("test_metrics")
        if run.get("auto"):  # settings chosen on validation, with their evidence (towers.tuning)
            parts.metadata["auto"] = run["auto"]
    reference = reference_profile(retrieval_dir)
    if reference is not None:
        parts.metadata["reference_profile"] = reference
    if rankers is not None:
        from ranking.scoring import served_ranker

        parts.ranker = served_ranker(*rankers, config)
        rank_summary = Path(ranking_dir) / "run_summary.json"
        if rank_summary.exists():
            summary = json.loads(rank_summary.read_text())
            parts.metadata["ranking_metrics"] = summary.get("test_metrics")
            if summary.get("cold_start_popularity"):  # chosen on validation (ranking.prior), with its evidence
                parts.metadata["cold_start_popularity"] = summary["cold_start_popularity"]
        spec = Path(ranking_dir) / "ranking_spec.json"
        stored = json.loads(spec.read_text()) if spec.exists() else {}
        parts.served_list = ServedListSpec.stored(stored, config)
        parts.metadata["served_list"] = parts.served_list.to_dict()
    return parts


def reference_profile(retrieval_dir: str | Path) -> dict | None:
    """The profile of the data the towers in ``retrieval_dir`` were trained on (``crossrec.profile``:
    shares and counts only, never a user id or a history), or None when the run kept no data."""
    import pandas as pd

    from crossrec.profile import profile

    data = Path(retrieval_dir) / "data"
    if not (data / "interactions.parquet").is_file():
        return None
    items = data / "items.parquet"
    return profile(pd.read_parquet(data / "interactions.parquet"), pd.read_parquet(items) if items.is_file() else None)


def stored_embeddings(retrieval_dir: str | Path, catalogue: Catalogue) -> np.ndarray | None:
    """(items, e) the item embedding table the run wrote (``item_embeddings.parquet``, rows 1..n:
    exactly what its towers computed, and after a catalogue change the served rows unchanged), or
    None when the folder has none or it does not list the catalogue's items in row order."""
    from crossrec import schema
    from towers.embedding_table import FILE, read_item_embeddings

    path = Path(retrieval_dir) / FILE
    if not path.exists():
        return None
    table, embeddings = read_item_embeddings(path)
    keys = [schema.DOMAIN, schema.ITEM_ID]
    if len(table) != len(catalogue) or not (table[keys].to_numpy() == catalogue.items[keys].to_numpy()).all():
        return None
    return embeddings


def index_recall(parts: ExportParts, queries: np.ndarray, k: int = 10) -> dict:
    """Recall@k of the index against exact float32 search, for query embeddings ``queries`` [n, e]
    (each asked in every domain), and the index's search time per query (ms, batches of 256)."""
    exact_hits, total, seconds, asked = 0, 0, 0.0, 0
    for d in range(1, len(parts.catalogue.domain_names) + 1):
        rows = np.flatnonzero(parts.catalogue.served_domain == d)
        rows = rows[rows > 0]
        if len(rows) == 0:
            continue
        kk = min(k, len(rows))
        exact = rows[np.argsort(-(queries @ parts.item_embeddings[rows].T), axis=1)[:, :kk]]
        parts.index.rows_for(queries[:1], d, kk)  # the first call traces
        started = time.perf_counter()
        found = parts.index.rows_for(queries, d, kk)
        seconds += time.perf_counter() - started
        asked += len(queries)
        exact_hits += sum(len(set(a) & set(b)) for a, b in zip(exact, found, strict=True))
        total += exact.size
    return {f"recall@{k}": round(exact_hits / max(total, 1), 4),
            "search_ms_per_query": round(1000 * seconds / max(asked, 1), 4)}


def sample_queries(parts: ExportParts, n: int, seed: int = 0) -> np.ndarray:
    """Query embeddings of ``n`` real training queries (from the config's data), for measuring
    the index's recall; empty if the data cannot be loaded here."""
    from towers.queries import sample_query_embeddings

    try:
        data = prepare_data(parts.config)
    except crossrec.errors.CrossrecInputError as exc:
        print(f"note: index recall not measured: the training data could not be loaded ({exc})")
        return np.zeros((0, parts.item_embeddings.shape[1]), np.float32)
    return sample_query_embeddings(parts.retrieval_model, data.examples, n, seed)
