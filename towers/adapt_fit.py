"""The fit loop of the encoder's adaptation (``towers.adapt``): held-out pairs, the frozen layers'
states computed once, contrastive steps within the time budget, a checkpoint every minute that a
killed run resumes from, and the adapted preset written whole (renamed into place)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from crossrec import schema
from crossrec.config import AdaptConfig
from crossrec.errors import ConfigError, TrainingDiverged
from crossrec.features import Catalogue
from towers.encoder import TextEncoder

STATE = "state.npz"
HELD_OUT = 1000  # pairs kept out of training to measure the adaptation
CHECKPOINT_SECONDS = 60
REPORT = "adapt.json"


class TopLayers:
    """The encoder split at its trained layers: ``lower(tokens)`` the frozen part's sequence
    output, ``vectors(states, mask)`` the trained layers and the mean pooling, normalised."""

    def __init__(self, encoder: TextEncoder, layers: int):
        backbone = encoder.backbone
        transformer = [layer for layer in backbone.layers if layer.name.startswith("transformer_layer_")]
        if not 1 <= layers < len(transformer):
            raise ConfigError(f"encoder.adapt.layers must be between 1 and {len(transformer) - 1} (the backbone has "
                              f"{len(transformer)} transformer layers and at least one stays frozen), got {layers}")
        self.encoder = encoder
        self.top = transformer[-layers:]
        self.lower_model = keras.Model(backbone.inputs, transformer[-layers - 1].output)
        for layer in self.top:
            layer.trainable = True
        self.weights = [w for layer in self.top for w in layer.trainable_weights]
        self._lower = tf.function(self._lower_call, reduce_retracing=True,
                                  input_signature=[tf.TensorSpec([None, None], tf.int32)])

    def _lower_call(self, token_ids):
        inputs = {"token_ids": token_ids, "padding_mask": tf.not_equal(token_ids, self.encoder.pad_id)}
        if "segment_ids" in self.encoder.layer.input_names:
            inputs["segment_ids"] = tf.zeros_like(token_ids)
        return self.lower_model(inputs, training=False)

    def lower_states(self, tokens: np.ndarray, path: Path, *, progress: bool) -> np.ndarray:
        """(n, length, dim) float16 states below the trained layers, written to ``path`` (renamed
        into place when complete) and read back memory-mapped."""
        if not path.exists():
            n, length = tokens.shape
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, length, self.encoder.dim))
            lengths = (tokens != self.encoder.pad_id).sum(axis=1)
            order = np.argsort(lengths, kind="stable")
            size = self.encoder.config.batch_size
            for start in tqdm(range(0, n, size), desc="adapting: encoding below the trained layers", unit="batch",
                              disable=not progress, leave=False):
                rows = order[start:start + size]
                width = max(1, int(lengths[rows].max()))
                out[rows, :width] = self._lower(tf.constant(tokens[rows, :width])).numpy().astype(np.float16)
            out.flush()
            del out
            os.replace(tmp, path)
        return np.load(path, mmap_mode="r")

    def vectors(self, states, mask, training=False):
        hidden = tf.cast(states, tf.float32)
        for layer in self.top:
            hidden = layer(hidden, padding_mask=mask, training=training)
        weights = tf.cast(mask, hidden.dtype)[..., None]
        pooled = tf.reduce_sum(hidden * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
        return tf.math.l2_normalize(pooled, axis=-1)


def contrastive_loss(a, b, item_a, item_b, temperature: float):
    """Symmetric in-batch softmax of each pair against the batch's other pairs; another pair
    holding the same item is not counted as a negative."""
    logits = tf.matmul(a, b, transpose_b=True) / temperature
    eye = tf.eye(tf.shape(a)[0], dtype=tf.bool)
    labels = tf.range(tf.shape(a)[0])
    same_b = tf.equal(item_b[None, :], item_b[:, None]) & ~eye
    same_a = tf.equal(item_a[None, :], item_a[:, None]) & ~eye
    forward = tf.where(same_b, -1e9, logits)
    backward = tf.where(same_a, -1e9, tf.transpose(logits))
    return 0.5 * (tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, forward))
                  + tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, backward)))


class _Pairs:
    """The pairs as positions into the items whose states were computed, with the token masks."""

    def __init__(self, pairs: np.ndarray, catalogue: Catalogue, settings: AdaptConfig):
        rng = np.random.default_rng(settings.seed)
        pairs = pairs[rng.permutation(len(pairs))]
        held = min(HELD_OUT, len(pairs) // 10)
        self.held, self.train = pairs[:held], pairs[held:][:settings.max_pairs]
        self.items = np.unique(np.concatenate([self.held.ravel(), self.train.ravel()]))
        self.position = np.zeros(catalogue.size, np.int64)
        self.position[self.items] = np.arange(len(self.items))
        self.texts = catalogue.items[schema.TEXT].to_numpy()[self.items - 1].tolist()  # rows are 1..n
        self.seed = settings.seed

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.train))


def _batch(states, masks, positions):
    """The stored states and token masks of ``positions``, cut to their longest text."""
    width = max(1, int(masks[positions].sum(axis=1).max()))
    return tf.constant(np.asarray(states[positions, :width])), tf.constant(masks[positions, :width])


def held_out_recall(top: TopLayers, states, masks, pairs: _Pairs, k: int = 10) -> float:
    """Recall@k of each held-out pair's second item among every held-out pair's, from its first."""
    if len(pairs.held) == 0:
        return float("nan")
    sides = []
    for column in (0, 1):
        positions = pairs.position[pairs.held[:, column]]
        sides.append(np.concatenate([top.vectors(*_batch(states, masks, positions[i:i + 256])).numpy()
                                     for i in range(0, len(positions), 256)]))
    scores = sides[0] @ sides[1].T
    same = (pairs.held[:, 1][None, :] == pairs.held[:, 1][:, None]) & ~np.eye(len(scores), dtype=bool)
    scores[same] = -np.inf
    rank = (scores > np.diag(scores)[:, None]).sum(axis=1)
    return float((rank < k).mean())


def _save_state(work: Path, top: TopLayers, optimizer, meta: dict) -> None:
    arrays = {f"w{i}": w.numpy() for i, w in enumerate(top.weights)}
    arrays.update({f"o{i}": v.numpy() for i, v in enumerate(optimizer.variables)})
    tmp = work / f".{STATE}.{os.getpid()}.tmp.npz"
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, work / STATE)


def _restore_state(work: Path, top: TopLayers, optimizer) -> dict:
    """The saved progress (weights and optimizer assigned back), or {} for a fresh start."""
    if not (work / STATE).exists():
        return {}
    with np.load(work / STATE) as saved:
        for i, w in enumerate(top.weights):
            w.assign(saved[f"w{i}"])
        for i, v in enumerate(optimizer.variables):
            v.assign(saved[f"o{i}"])
        return json.loads(str(saved["meta"]))


def _step_function(top: TopLayers, optimizer, temperature: float):
    @tf.function(reduce_retracing=True)
    def step(states_a, mask_a, states_b, mask_b, item_a, item_b):
        with tf.GradientTape() as tape:
            a = top.vectors(states_a, mask_a, training=True)
            b = top.vectors(states_b, mask_b, training=True)
            loss = contrastive_loss(a, b, item_a, item_b, temperature)
        optimizer.apply_gradients(zip(tape.gradient(loss, top.weights), top.weights, strict=True))
        return loss

    return step


def fit_adapter(encoder: TextEncoder, catalogue: Catalogue, pairs: np.ndarray, settings: AdaptConfig, path: Path,
                *, progress: bool) -> None:
    """Adapts ``encoder``'s top layers on ``pairs`` and writes the preset folder ``path``."""
    started = time.perf_counter()
    work = path.with_name(f".{path.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    data = _Pairs(pairs, catalogue, settings)
    top = TopLayers(encoder, settings.layers)
    tokens = encoder.tokenize(data.texts)
    masks = tokens != encoder.pad_id
    states = top.lower_states(tokens, work / "states.npy", progress=progress)
    optimizer = keras.optimizers.AdamW(settings.learning_rate)
    optimizer.build(top.weights)
    meta = _restore_state(work, top, optimizer) or {"step": 0, "seconds": 0.0, "losses": [],
                                                    "recall_at_10_before": held_out_recall(top, states, masks, data)}
    previous_seconds = meta["seconds"]
    deadline = started + settings.budget_minutes * 60 - previous_seconds
    meta["encode_seconds"] = meta.get("encode_seconds") or round(time.perf_counter() - started, 2)
    _train(top, optimizer, states, masks, data, settings, meta, work, deadline, progress)
    meta["recall_at_10_after"] = held_out_recall(top, states, masks, data)
    meta["seconds"] = previous_seconds + time.perf_counter() - started
    _write_preset(encoder, path, _report(meta, data, settings, encoder))
    shutil.rmtree(work, ignore_errors=True)


def _train(top, optimizer, states, masks, data: _Pairs, settings: AdaptConfig, meta: dict, work: Path,
           deadline: float, progress: bool) -> None:
    size = settings.batch_size
    per_epoch = max(1, len(data.train) // size)
    total = per_epoch * settings.epochs
    step_fn = _step_function(top, optimizer, settings.temperature)
    bar = tqdm(total=total, initial=meta["step"], desc="adapting the text encoder", unit="step",
               disable=not progress, dynamic_ncols=True)
    train_started, checkpointed, order_epoch, order = time.perf_counter(), time.perf_counter(), -1, None
    meta["stopped_by_budget"] = False
    while meta["step"] < total:
        if time.perf_counter() > deadline:
            meta["stopped_by_budget"] = True
            break
        epoch, index = divmod(meta["step"], per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, data.epoch_order(epoch)
        batch = data.train[order[index * size:(index + 1) * size]]
        a, b = data.position[batch[:, 0]], data.position[batch[:, 1]]
        loss = float(step_fn(*_batch(states, masks, a), *_batch(states, masks, b),
                             tf.constant(batch[:, 0]), tf.constant(batch[:, 1])))
        if not np.isfinite(loss):
            raise TrainingDiverged("adapting the text encoder: the loss is not finite; lower "
                                   "encoder.adapt.learning_rate")
        meta["step"] += 1
        meta["losses"] = [*meta["losses"][-49:], round(loss, 4)]
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.update(1)
        if time.perf_counter() - checkpointed > CHECKPOINT_SECONDS:
            _save_state(work, top, optimizer, meta)
            checkpointed = time.perf_counter()
    bar.close()
    meta["train_seconds"] = round(meta.get("train_seconds", 0.0) + time.perf_counter() - train_started, 2)


def _report(meta: dict, data: _Pairs, settings: AdaptConfig, encoder: TextEncoder) -> dict:
    per_epoch = max(1, len(data.train) // settings.batch_size)
    return {
        "base_fingerprint": encoder.fingerprint, "pairs": len(data.train) + len(data.held),
        "trained_pairs": len(data.train), "held_out_pairs": len(data.held), "items": len(data.items),
        "layers": settings.layers, "steps": meta["step"], "epochs": round(meta["step"] / per_epoch, 3),
        "stopped_by_budget": meta["stopped_by_budget"], "budget_minutes": settings.budget_minutes,
        "seconds": round(meta["seconds"], 2), "encode_seconds": meta["encode_seconds"],
        "train_seconds": meta["train_seconds"],
        "pairs_per_second": round(meta["step"] * settings.batch_size / max(meta["train_seconds"], 1e-9), 1),
        "recall_at_10_before": round(meta["recall_at_10_before"], 4),
        "recall_at_10_after": round(meta["recall_at_10_after"], 4),
        "loss_last": meta["losses"][-10:],
    }


def _write_preset(encoder: TextEncoder, path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.backbone.save_to_preset(str(tmp))
    encoder.tokenizer.save_to_preset(str(tmp))
    (tmp / REPORT).write_text(json.dumps(report, indent=2))
    if path.exists():  # another process finished the same adaptation first
        shutil.rmtree(tmp)
        return
    os.replace(tmp, path)
