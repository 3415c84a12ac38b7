"""The candidates job's model handlers (``RunInference``): which served version, and how a
batch of users' queries becomes one call of its signature.

- ``SavedModelHandler``: the ``retrieval`` model's ``candidates`` signature (its default on older
  exports), seen items of the target domain left out beyond the model's history window;
- ``RecommenderHandler``: retrieval and the ``recommender`` on the same batch, the recommender's
  top N heading each list (``--rank-top``);
- ``serving.batch_feed.FeedHandler``: the ``recommender``'s ``feed`` signature (``--feed``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from crossrec.errors import ConfigError
from serving.layout import METADATA_FILE
from serving.model_set import latest_complete

NAMESPACE = "crossrec.candidates"


@dataclass
class Query:
    user_id: str
    domain: str
    history_item_ids: list[str]
    history_domains: list[str]


@dataclass
class ServedModel:
    """A served version on disk: where it is and what its metadata says."""

    name: str
    version: int
    path: Path
    metadata: dict = field(default_factory=dict)

    @classmethod
    def latest(cls, model_dir: str | Path, name: str) -> ServedModel:
        base = Path(model_dir) / name
        version = latest_complete(base)  # of a whole model set, never half of one
        if version is None:
            raise ConfigError(f"{base}: no exported version of the {name} model (run `crossrec export` first)")
        path = base / str(version)
        metadata_file = path / "assets" / METADATA_FILE
        metadata = json.loads(metadata_file.read_text()) if metadata_file.exists() else {}
        return cls(name, version, path, metadata)


# --- the model handler -------------------------------------------------------------------------------

def pad_histories(histories: Sequence[list[str]]) -> np.ndarray:
    width = max(1, max(len(h) for h in histories))
    out = np.full((len(histories), width), b"", dtype=object)
    for i, history in enumerate(histories):
        out[i, :len(history)] = [str(v).encode() for v in history]
    return out


class SavedModelHandler(ModelHandler[Query, dict, object]):
    """Runs a SavedModel signature on whole batches of ``Query``s (one call per batch).

    ``retrieval``: asks for ``k`` plus the user's seen items of the target domain (so that every
    seen item can be left out, not only those in the model's history window), then keeps the top
    ``k`` unseen ones. Yields ``{"item_ids", "scores", "history_known", "history_in_domain"}``.
    """

    def __init__(self, served: ServedModel, *, k: int, exclude_seen: bool = True, max_batch_size: int = 1024):
        if (served.metadata.get("index") or {}).get("kind") == "scann":
            from serving.index import DomainIndex

            max_batch_size = min(max_batch_size, DomainIndex.SCANN_MAX_QUERIES)  # what a ScaNN export accepts
        # fixed batches (min = max): BatchElements' adaptive sizes start at 1 and vary by 25%
        super().__init__(min_batch_size=max_batch_size, max_batch_size=max_batch_size)
        self.served = served
        self.k = k
        self.exclude_seen = exclude_seen
        self.max_k = int(served.metadata.get("max_k") or k)

    def load_model(self):
        import tensorflow as tf

        from serving.models import register_custom_ops

        register_custom_ops()
        signatures = tf.saved_model.load(str(self.served.path)).signatures
        # "candidates" answers without the explanations (cheaper); exports before it have only the default
        return signatures.get("candidates", signatures["serving_default"])

    def run_inference(self, batch: Sequence[Query], model, inference_args=None) -> Iterable[dict]:
        import tensorflow as tf

        seen = [{item for item, d in zip(q.history_item_ids, q.history_domains, strict=True) if d == q.domain}
                for q in batch]
        ask = [min(self.max_k, self.k + (len(s) if self.exclude_seen else 0)) for s in seen]
        out = model(history_item_ids=tf.constant(pad_histories([q.history_item_ids for q in batch])),
                    history_domains=tf.constant(pad_histories([q.history_domains for q in batch])),
                    target_domain=tf.constant([q.domain.encode() for q in batch]),
                    k=tf.constant(ask, tf.int32), exclude_history=tf.constant([self.exclude_seen] * len(batch)))
        ids, scores = out["item_ids"].numpy(), out["scores"].numpy()
        known, in_domain = out["history_known"].numpy(), out["history_in_domain"].numpy()
        for i in range(len(batch)):
            items, values = [], []
            for item, score in zip(ids[i], scores[i], strict=True):
                item = item.decode()
                if not item or (self.exclude_seen and item in seen[i]):
                    continue
                items.append(item)
                values.append(float(score))
                if len(items) == self.k:
                    break
            yield {"item_ids": items, "scores": values, "history_known": int(known[i]),
                   "history_in_domain": int(in_domain[i])}

    def get_num_bytes(self, batch: Sequence[Query]) -> int:
        return sum(16 * (1 + len(q.history_item_ids)) for q in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


@dataclass
class _TwoModels:
    """Both loaded signatures (RunInference keeps its model by weak reference: not a tuple)."""

    retrieval: object
    recommender: object


class RecommenderHandler(SavedModelHandler):
    """Retrieval and the ``recommender`` model on the same batch of ``Query``s (no join between
    two inference steps): the recommender's first ``top`` items (the served path: the towers' and
    the candidate sources' proposals merged and ranked), then the retrieved items it did not pick.
    Yields the retrieval answer with that head (``ranked`` = its length)."""

    def __init__(self, retrieval: SavedModelHandler, served: ServedModel, *, top: int, exclude_seen: bool = True):
        super().__init__(served, k=top, exclude_seen=exclude_seen,
                         max_batch_size=retrieval.batch_elements_kwargs()["max_batch_size"])
        self.retrieval = retrieval
        self.top = top

    def load_model(self) -> _TwoModels:
        return _TwoModels(self.retrieval.load_model(), super().load_model())

    def run_inference(self, batch: Sequence[Query], model: _TwoModels, inference_args=None):
        retrieved_lists = self.retrieval.run_inference(batch, model.retrieval)
        for retrieved, served in zip(retrieved_lists, super().run_inference(batch, model.recommender), strict=True):
            head = served["item_ids"]
            rest = [(item, score) for item, score in zip(retrieved["item_ids"], retrieved["scores"], strict=True)
                    if item not in set(head)][:max(0, len(retrieved["item_ids"]) - len(head))]
            yield {**retrieved, "item_ids": head + [item for item, _ in rest],
                   "scores": served["scores"] + [score for _, score in rest], "ranked": len(head)}
