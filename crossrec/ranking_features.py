"""The ranker's inputs, defined once: each feature's name, width, the tables it reads and what
it means. Config validation (``crossrec.ranking_config``), the ranking model
(``ranking.features``, which holds one function per name) and the docs' feature
reference (generated from it at each docs build, ``docs/hooks.py``) all read this registry."""

from __future__ import annotations

from dataclasses import dataclass

from crossrec.errors import ConfigError

CO_VISITATION, PROPAGATION, ITEM_KNN = "co_visitation", "propagation", "item_knn"
# The candidate sources (``ranking.sources``); each is also a feature group of the ranker.
CANDIDATE_SOURCES = (CO_VISITATION, PROPAGATION, ITEM_KNN)

# symbolic widths: the towers' embedding size and the catalogue's domain count (with padding)
EMBEDDING, DOMAINS = "embedding", "domains"


@dataclass(frozen=True)
class RankingFeature:
    name: str
    width: int | str  # columns it adds per candidate: a number, or EMBEDDING / DOMAINS
    tables: tuple[str, ...]  # the ``ranking.tables.FeatureTables`` weights it reads
    meaning: str
    in_default: bool = True  # in the teacher's default feature list (ranking.features: null)
    in_student: bool = True  # in the student's default list (no embedding vectors)

    def columns(self, embedding_dim: int, num_domains: int) -> int:
        return {EMBEDDING: embedding_dim, DOMAINS: num_domains}.get(self.width, self.width)


FEATURES = {f.name: f for f in (
    RankingFeature("query", EMBEDDING, (), "the user tower's query embedding", in_student=False),
    RankingFeature("candidate", EMBEDDING, ("item_embeddings",), "the candidate's item embedding",
                   in_student=False),
    RankingFeature("product", EMBEDDING, ("item_embeddings",), "their element-wise product", in_student=False),
    RankingFeature("retrieval_score", 1, ("item_embeddings",), "their dot product (the towers' score)"),
    RankingFeature("retrieval_rank", 1, ("item_embeddings",),
                   "the candidate's place in the list by that score, / list length"),
    RankingFeature("domain", DOMAINS, ("item_domain",), "one-hot of the candidate's domain"),
    RankingFeature("log_popularity", 1, ("popularity",), "log1p of the candidate's training interactions"),
    RankingFeature("item_rating", 2, ("rating_sum", "rating_count"),
                   "the candidate's mean training rating minus the global mean, and a has-ratings flag "
                   "(off by default: on the built-in data it cost NDCG)", in_default=False, in_student=False),
    RankingFeature("history_length", 2, ("item_domain",),
                   "log1p of the user's interactions in the candidate's domain and in all"),
    RankingFeature("recency", 2, ("item_domain",),
                   "interactions since the user's last one in the candidate's domain, / history length, "
                   "and a flag that there is one"),
    RankingFeature(CO_VISITATION, 3, ("popularity", "co_visitation_neighbours", "co_visitation_weights"),
                   "log1p of the history's summed co-visitation weight for the candidate, a reached flag, "
                   "and the candidate's place in the list by that weight"),
    RankingFeature(PROPAGATION, 3, ("popularity", "propagation_neighbours", "propagation_weights"),
                   "the same for the propagation source"),
    RankingFeature(ITEM_KNN, 3, ("popularity", "item_knn_neighbours", "item_knn_weights"),
                   "the same for the item-kNN source"),
    RankingFeature("text_similarity", 2, ("item_domain", "text_vectors"),
                   "cosine of the candidate's text-alone vector with the user's most recent item of its "
                   "domain, and a flag that there is one"),
    RankingFeature("item_age", 2, ("first_seen", "popularity"),
                   "the share of training time before the candidate was first seen (1 if never), and a "
                   "new flag"),
)}
RANKING_FEATURES = tuple(FEATURES)


def default_features(sources, *, student: bool = False) -> list[str]:
    """The teacher's (or student's) default inputs with the given candidate sources on."""
    return [f.name for f in FEATURES.values() if (f.in_student if student else f.in_default)
            and (f.name not in CANDIDATE_SOURCES or f.name in sources)]


def check_features(features, where: str, sources=None) -> None:
    """``features`` are known names, and (when ``sources`` is given) every source feature's
    source is on; a ConfigError naming ``where`` and the fix otherwise."""
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not features:
        raise ConfigError(f"{where}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                          f"choose from {', '.join(RANKING_FEATURES)}")
    if sources is not None:
        missing = [f for f in features if f in CANDIDATE_SOURCES and f not in sources]
        if missing:
            raise ConfigError(f"{where}: {', '.join(missing)} needs that source in ranking.sources "
                              f"(now {list(sources)}); add it there or drop the feature")


def width(features, embedding_dim: int, num_domains: int) -> int:
    """Columns per candidate of ``features`` together."""
    return sum(FEATURES[f].columns(embedding_dim, num_domains) for f in features)


def markdown_table() -> str:
    """The feature table of the docs' reference (docs/reference/ranking-features.md)."""
    lines = ["| feature | columns | default in | reads | meaning |", "|---|---|---|---|---|"]
    for f in FEATURES.values():
        tables = ", ".join(f"`{t}`" for t in f.tables) or "(the request's query)"
        default = ", ".join(w for w, on in (("teacher", f.in_default), ("student", f.in_student)) if on) or "-"
        lines.append(f"| `{f.name}` | {f.width} | {default} | {tables} | {f.meaning} |")
    return "\n".join(lines)
