"""Mining the ranker's candidate lists: the towers' top-K merged with every source's proposals,
for the training queries (in the label view, with cold-start copies) and the validation and test
queries (as served), into one ``RankingData``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossrec.config import Config
from crossrec.features import Catalogue, Examples, keep_right_aligned, query_examples
from ranking.candidates import CandidateLists, merge_candidates, mine_candidates
from ranking.sources import propose
from ranking.tables import FeatureTables, build_tables, fresh_items, label_tail, label_view
from towers.queries import query_embeddings


@dataclass
class RankingData:
    train: CandidateLists
    validation: list[tuple[str, CandidateLists]]
    test: list[tuple[str, CandidateLists]]
    catalogue: Catalogue
    tables: FeatureTables  # the serving view: every training interaction
    label_tables: FeatureTables | None = None  # the view the training lists were mined in (None: the serving one)

    @property
    def rating_mean(self) -> float | None:
        return self.tables.rating_mean


def text_vectors(retrieval_model) -> np.ndarray | None:
    """(size, e) every item embedded by its text alone (None: towers without text)."""
    if getattr(retrieval_model, "text_table", None) is None:
        return None
    return retrieval_model.all_item_embeddings(use_ids=False)


def candidate_lists(retrieval_model, examples, tables: FeatureTables, catalogue: Catalogue, ranking, *,
           seen=None, train: bool = False) -> CandidateLists:
    """The towers' top-K (in ``tables``' view) merged with each source's proposals."""
    lists = mine_candidates(query_embeddings(retrieval_model, examples), tables.item_embeddings, examples, catalogue,
                            ranking.candidates, seen=seen,
                            random_negatives=ranking.random_negatives if train else 0, seed=ranking.seed)
    target_domains = catalogue.item_domain_name[examples.target]
    extra = {table.name: propose(table, examples.history, target_domains, catalogue, ranking.source_candidates,
                                 seen=seen, keep=examples.target)[0]
             for table in tables.sources} if ranking.source_candidates else {}
    return merge_candidates(lists, extra, tables.item_embeddings)


def mine_ranking_data(retrieval_model, data, config: Config, *, progress: bool = False) -> RankingData:
    """Candidate lists for the ranker's training queries (target always included) and for the
    validation and test queries (as the merged sources return them), from a trained ``RetrievalModel``."""
    ranking = config.ranking
    catalogue = data.catalogue
    rating = data.examples.rating
    rating_mean = float(np.nanmean(rating)) if rating is not None and (~np.isnan(rating)).any() else None
    tables = build_tables(data.train, catalogue, retrieval_model.all_item_embeddings(), text_vectors(retrieval_model),
                          sources=ranking.sources, per_domain=ranking.source_neighbours, rating_mean=rating_mean)
    label_tables = None
    if ranking.label_tail:
        tail = label_tail(data.train, ranking.label_tail)
        fresh = fresh_items(data.train, catalogue, ranking.fresh_item_share, ranking.seed)
        label_tables = label_view(tables, data.train[~tail], catalogue, fresh)
        examples = query_examples(data.train, data.train[tail], catalogue, config.towers.history_length)
        examples = examples.subset(examples.target > 0)
    else:
        examples = data.examples
    if ranking.max_queries and len(examples) > ranking.max_queries:
        keep = np.sort(np.random.default_rng(ranking.seed).choice(len(examples), ranking.max_queries, replace=False))
        examples = examples.subset(keep)
    if ranking.cold_start_lists:
        examples = cold_start_copies(examples, catalogue, ranking.cold_start_lists, ranking.seed)
    if progress:
        print(f"mining candidates for {len(examples)} training queries (sources: {', '.join(ranking.sources) or 'none'})",
              flush=True)
    seen = [row[row > 0] for row in examples.history]
    train = candidate_lists(retrieval_model, examples, label_tables or tables, catalogue, ranking, seen=seen, train=True)
    # Only lists that hold their target, as the sources found it: a target forced into a list the
    # sources missed it from is a positive no served list has (its towers' score is low, so the
    # ranker would learn that the towers' score does not matter).
    train = train.subset(train.labels.sum(axis=1) > 0)

    def held_out(query_sets):
        return [(q.slice, candidate_lists(retrieval_model, q.examples, tables, catalogue, ranking, seen=q.seen))
                for q in query_sets if len(q.examples)]

    return RankingData(train, held_out(data.validation), held_out(data.test), catalogue, tables, label_tables)


def cold_start_copies(examples: Examples, catalogue: Catalogue, share: float, seed: int) -> Examples:
    """``examples`` followed by a seeded ``share`` of them asked again as a cross-domain cold start:
    every history item of the target's domain removed (the rest stays in order, right-aligned);
    an example whose history has no other domain gets no copy."""
    domain = catalogue.item_domain
    history = examples.history
    other = (history > 0) & (domain[history] != domain[examples.target][:, None])
    chosen = np.random.default_rng(seed).random(len(examples)) < share
    copy = np.flatnonzero(chosen & other.any(axis=1))
    both = np.r_[np.arange(len(examples)), copy]
    merged = examples.subset(both)
    merged.history[len(examples):] = keep_right_aligned(history[copy], other[copy])
    return merged
