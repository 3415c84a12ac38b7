"""``crossrec candidates --feed N``: one feed across every domain per user, on Apache Beam.

The batch twin of ``crossrec query --feed``: each user's history goes through the exported
``recommender``'s ``feed`` signature (``serving.feed``) with the job's ``diversity`` and
``calibration``, and the N items come out as candidate rows whose ``domain`` is each item's own.
One query per user (``FEED_DOMAIN`` in the key: a feed has no target domain). Items the user has
seen anywhere in the history are left out, not only those in the model's history window: the job
asks for N plus the number of seen items (at most ``max_k``), drops the seen ones and keeps the
first N, which is the greedy selection's own prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from crossrec.errors import ConfigError
from ranking.feed import FEED_DEFAULTS, MAX_CALIBRATION
from serving.batch_handlers import Query, SavedModelHandler, ServedModel, pad_histories

FEED_DOMAIN = "*"  # the key's domain of a feed query: every domain


@dataclass(frozen=True)
class FeedRequest:
    """What the job asks of every user's feed."""

    n: int
    diversity: float = FEED_DEFAULTS["diversity"]
    calibration: float = FEED_DEFAULTS["calibration"]

    def check(self, recommender: ServedModel) -> None:
        """Clear errors, before a pipeline is built, for what the export would refuse per batch."""
        if "feed_signature" not in recommender.metadata:
            raise ConfigError(f"--feed: {recommender.path} has no feed signature; re-export the recommender with "
                              "this crossrec (crossrec export)")
        max_k = int(recommender.metadata.get("max_k") or self.n)
        if not 1 <= self.n <= max_k:
            raise ConfigError(f"--feed {self.n}: must be between 1 and the recommender's max_k ({max_k}); "
                              "re-export with a larger export.max_k for more")
        if not 0.0 <= self.diversity <= 1.0:
            raise ConfigError(f"--diversity {self.diversity}: must be a number from 0 to 1")
        if not 0.0 <= self.calibration <= MAX_CALIBRATION:
            raise ConfigError(f"--calibration {self.calibration}: must be a number from 0 to {MAX_CALIBRATION:g}")


class FeedHandler(SavedModelHandler):
    """The ``feed`` signature on whole batches of ``Query``s. Yields ``{"item_ids", "domains",
    "scores", "history_known", "history_in_domain"}`` (the same count twice: a feed's every domain
    is a target, so no user of it is a cross-domain cold start)."""

    def __init__(self, served: ServedModel, request: FeedRequest, *, exclude_seen: bool = True,
                 max_batch_size: int = 1024):
        super().__init__(served, k=request.n, exclude_seen=exclude_seen, max_batch_size=max_batch_size)
        self.request = request

    def load_model(self):
        import tensorflow as tf

        return tf.saved_model.load(str(self.served.path)).signatures["feed"]

    def run_inference(self, batch: Sequence[Query], model, inference_args=None) -> Iterable[dict]:
        import tensorflow as tf

        seen = [set(zip(q.history_domains, q.history_item_ids, strict=True)) for q in batch]
        ask = [min(self.max_k, self.request.n + (len(s) if self.exclude_seen else 0)) for s in seen]
        size = len(batch)
        out = model(history_item_ids=tf.constant(pad_histories([q.history_item_ids for q in batch])),
                    history_domains=tf.constant(pad_histories([q.history_domains for q in batch])),
                    n=tf.constant(ask, tf.int32), diversity=tf.fill([size], float(self.request.diversity)),
                    calibration=tf.fill([size], float(self.request.calibration)),
                    target_shares=tf.zeros([size, 0]), exclude_history=tf.constant([self.exclude_seen] * size))
        ids, domains, scores = out["item_ids"].numpy(), out["domains"].numpy(), out["scores"].numpy()
        known = out["history_known"].numpy()
        for i in range(size):
            picked = []
            for item, domain, score in zip(ids[i], domains[i], scores[i], strict=True):
                item, domain = item.decode(), domain.decode()
                if item and not (self.exclude_seen and (domain, item) in seen[i]):
                    picked.append((item, domain, float(score)))
            picked = picked[:self.request.n]
            yield {"item_ids": [p[0] for p in picked], "domains": [p[1] for p in picked],
                   "scores": [p[2] for p in picked], "history_known": int(known[i]),
                   "history_in_domain": int(known[i])}
