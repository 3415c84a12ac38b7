"""Keras callbacks of the retrieval fit script: full-corpus validation metrics after each epoch
(what early stopping and checkpoints watch), re-encoding item text while fine-tuning, and a
backup that survives being killed mid-write."""

from __future__ import annotations

import shutil

import keras
import numpy as np

from crossrec.evaluation import QuerySet, target_ranks
from crossrec.features import Catalogue
from crossrec.metrics import ranking_metrics
from towers.model import RetrievalModel
from towers.queries import scorer_for


class RetrievalEvaluation(keras.callbacks.Callback):
    """Full-corpus Recall@k / NDCG@10 on the validation queries after each epoch, into the logs
    (``val_recall_at_50``...), where EarlyStopping and ModelCheckpoint read them."""

    def __init__(self, queries: list[QuerySet], catalogue: Catalogue, ks=(10, 50), exclude_seen=True):
        super().__init__()
        self.queries, self.catalogue, self.ks, self.exclude_seen = queries, catalogue, ks, exclude_seen

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.queries:
            return
        logs.update(validation_metrics(self.model, self.queries, self.catalogue, self.ks, self.exclude_seen))


def validation_metrics(model: RetrievalModel, queries: list[QuerySet], catalogue: Catalogue, ks=(10, 50),
                       exclude_seen: bool = True) -> dict[str, float]:
    """``val_recall_at_<k>`` and ``val_ndcg_at_10`` of ``model`` over all ``queries`` (full corpus),
    and ``val_recall_at_<k>_<slice>`` per slice (what ``towers.tuning`` weighs slice by slice)."""
    scorer = scorer_for(model, "model")
    per_slice = [(q.slice, target_ranks(scorer, q, catalogue, exclude_seen=exclude_seen)) for q in queries]
    metrics = ranking_metrics(np.concatenate([r for _, r in per_slice]), ks)
    out = {f"val_recall_at_{k}": float(metrics[f"recall@{k}"]) for k in ks}
    out["val_ndcg_at_10"] = float(metrics["ndcg@10"])
    for name, ranks in per_slice:
        if len(ranks):
            sliced = ranking_metrics(ranks, ks)
            out.update({f"val_recall_at_{k}_{name}": float(sliced[f"recall@{k}"]) for k in ks})
    return out


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that survives being killed while writing its backup: it keeps the
    previous backup too (``double_checkpoint``) and falls back to it; when no backup can be read
    at all (killed during the very first write) training starts over instead of failing."""

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, double_checkpoint=True)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError) as exc:
            print(f"note: the training backup in {self.backup_dir} is unreadable ({exc}); starting this fit again")
            shutil.rmtree(self.backup_dir, ignore_errors=True)
