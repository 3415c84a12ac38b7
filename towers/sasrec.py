"""SASRec (Kang & McAuley, ICDM 2018): the field's reference sequential recommender, a baseline.

Item IDs only: a user's sequence (every domain, in order) through causal self-attention blocks
(keras-hub ``TransformerDecoder`` without cross-attention, pre-norm), trained at every position
to predict the next item with a softmax over that item's domain catalogue: the full softmax
(Klenitskiy & Vasilev, RecSys 2023: cross-entropy over the catalogue instead of the paper's one
sampled negative makes SASRec much stronger). A query's vector is the state at the last
position of its history; an item's score is its dot product with the input item embeddings
(shared, as in the paper). Items without a training interaction keep a zero embedding (they
have no ID to learn), as the ID-only two-tower's do. The number of epochs is chosen on the
validation queries (NDCG@10, warm and cold start; the best epoch's weights are kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import keras_hub
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import ops

from crossrec import schema
from crossrec.data.splits import NEW_ITEM
from crossrec.evaluation import evaluate
from crossrec.features import Catalogue, Examples, in_user_order
from crossrec.progress import epoch_bar


@dataclass(frozen=True)
class SASRecSettings:
    """The paper's settings (two blocks, one head, Adam at 1e-3) with its two dropout rates (0.2
    for dense data, 0.5 for sparse Amazon data), chosen between on validation."""

    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropouts: tuple[float, ...] = (0.2, 0.5)
    learning_rate: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 40
    patience: int = 3
    min_steps: int = 200


class SASRec(keras.Model):
    """(b, L) item rows, right-aligned, 0 = padding -> (b, L, d) states (``call``)."""

    def __init__(self, num_items: int, item_domain: np.ndarray, length: int, settings: SASRecSettings, *,
                 dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.settings, self.dropout_rate = settings, dropout
        self.item_embedding = keras.layers.Embedding(num_items, settings.dim, name="items")
        self.position_embedding = keras_hub.layers.PositionEmbedding(length, name="positions")
        self.blocks = [keras_hub.layers.TransformerDecoder(settings.dim, settings.heads, dropout=dropout,
                                                           normalize_first=True, name=f"block_{i}")
                       for i in range(settings.blocks)]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")
        self.dropout = keras.layers.Dropout(dropout)
        self.item_domain = tf.constant(item_domain, tf.int32)
        self.domain_rows = _domain_rows(np.asarray(item_domain))

    def call(self, rows, training=False):
        rows = ops.cast(rows, "int32")
        x = self.item_embedding(rows) * math.sqrt(self.settings.dim)
        x = self.dropout(x + self.position_embedding(x), training=training)
        mask = rows > 0
        for block in self.blocks:
            x = block(x, decoder_padding_mask=mask, training=training)
        return self.norm(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean cross-entropy of every real position's next item against its domain's catalogue
        (each domain's rows are one slice of the table: the logits cover that slice only)."""
        targets = ops.cast(y, "int32")
        real = targets > 0
        states = tf.boolean_mask(y_pred, real)  # (n, d)
        wanted = tf.boolean_mask(targets, real)  # (n,)
        domain = ops.take(self.item_domain, wanted)
        table = self.item_embedding.embeddings
        total = 0.0
        for index, (start, stop) in self.domain_rows.items():
            mine = ops.equal(domain, index)
            logits = ops.matmul(tf.boolean_mask(states, mine), ops.transpose(table[start:stop]))
            total += ops.sum(keras.losses.sparse_categorical_crossentropy(
                tf.boolean_mask(wanted, mine) - start, logits, from_logits=True))
        return total / ops.cast(ops.maximum(ops.size(wanted), 1), "float32")

    def query_vectors(self, history: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(n, d) the last position's state of each right-aligned history."""
        out = [np.asarray(self(history[s:s + batch_size], training=False)[:, -1])
               for s in range(0, len(history), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.settings.dim), np.float32)


def _domain_rows(item_domain: np.ndarray) -> dict[int, tuple[int, int]]:
    """Each domain's (first row, row after its last): a catalogue keeps a domain's rows together."""
    rows = {}
    for index in np.unique(item_domain[1:]):
        where = np.flatnonzero(item_domain == index)
        if index > 0:
            if where[-1] - where[0] + 1 != len(where):
                raise ValueError(f"the rows of domain {index} are not contiguous")
            rows[int(index)] = (int(where[0]), int(where[-1]) + 1)
    return rows


def training_sequences(train: pd.DataFrame, catalogue: Catalogue, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each (n, length), right-aligned: every user's training sequence cut
    from its end into pieces of ``length + 1`` items (the input is a piece but its last item, the
    target at each position the item after it; 0 = padding)."""
    frame = in_user_order(train)
    rows = catalogue.rows(frame[schema.DOMAIN], frame[schema.ITEM_ID]).astype(np.int32)
    users = frame[schema.USER_ID].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(users)]
    pieces = []
    for start, end in zip(starts, ends, strict=True):
        for stop in range(end, start + 1, -length):
            pieces.append(rows[max(start, stop - length - 1):stop])
    inputs = np.zeros((len(pieces), length), np.int32)
    targets = np.zeros((len(pieces), length), np.int32)
    for i, piece in enumerate(pieces):
        inputs[i, length - len(piece) + 1:] = piece[:-1]
        targets[i, length - len(piece) + 1:] = piece[1:]
    return inputs, targets


class SASRecScorer:
    """A trained SASRec through the evaluator's ``Scorer`` protocol."""

    name = "sasrec"

    def __init__(self, model: SASRec):
        self.model = model
        self.items = np.asarray(model.item_embedding.embeddings)

    def score(self, queries: Examples, candidate_rows: np.ndarray) -> np.ndarray:
        length = self.model.position_embedding.sequence_length
        history = queries.history[:, -length:]
        if history.shape[1] < length:
            history = np.pad(history, ((0, 0), (length - history.shape[1], 0)))
        return self.model.query_vectors(history) @ self.items[candidate_rows].T


VALIDATION_QUERIES = 2000  # per slice: enough to choose an epoch, a fraction of a large split's cost


class _SelectOnValidation(keras.callbacks.Callback):
    """NDCG@10 on (at most 2,000 per slice of) the validation queries (not new items: an ID model has nothing for them) after
    each epoch; stops after ``patience`` epochs without a gain and restores the best weights."""

    def __init__(self, data, settings: SASRecSettings):
        super().__init__()
        self.queries = [q.sample(VALIDATION_QUERIES, seed=0) for q in data.validation
                        if q.slice != NEW_ITEM and len(q.examples)]
        self.catalogue, self.settings = data.catalogue, settings
        self.best, self.best_weights, self.waited = -1.0, None, 0

    def on_epoch_end(self, epoch, logs=None):
        frame = evaluate([SASRecScorer(self.model)], self.queries, self.catalogue, ks=(10,))
        value = float(frame[frame["domain"] == "all"]["ndcg@10"].mean()) if len(frame) else 0.0
        if logs is not None:  # shown by the progress line (callbacks after this one see it)
            logs["val_ndcg_at_10"] = value
        if value > self.best:
            self.best, self.best_weights, self.waited = value, self.model.get_weights(), 0
        else:
            self.waited += 1
            self.model.stop_training = self.waited >= self.settings.patience

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def train_sasrec(config, data, *, progress: bool = False, settings: SASRecSettings | None = None) -> SASRecScorer:
    """SASRec trained on ``data.train`` (an ``ExperimentData``): one model per dropout rate of
    ``settings.dropouts``, each for the epochs its validation NDCG@10 chose; the best one is kept."""
    settings = settings or SASRecSettings()
    length = config.towers.history_length
    catalogue = data.catalogue
    inputs, targets = training_sequences(data.train, catalogue, length)
    dataset = (tf.data.Dataset.from_tensor_slices((inputs, targets)).shuffle(len(inputs), seed=config.train.seed)
               .repeat().batch(settings.batch_size).prefetch(tf.data.AUTOTUNE))
    # an "epoch" (one validation) is a pass over the pieces, and never fewer than min_steps steps:
    # small data (2,000 users: 16 steps a pass) would otherwise stop before it learnt anything
    steps = max(-(-len(inputs) // settings.batch_size), settings.min_steps)
    best, chosen = None, -1.0
    for dropout in settings.dropouts:
        keras.utils.set_random_seed(config.train.seed)
        model = SASRec(catalogue.size, catalogue.item_domain, length, settings, dropout=dropout, name="sasrec")
        model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate))
        selection = _SelectOnValidation(data, settings)
        callbacks = [selection, keras.callbacks.TerminateOnNaN()]
        if progress:
            callbacks.append(epoch_bar(f"sasrec (dropout {dropout})", settings.max_epochs, keras.callbacks.Callback))
        model.fit(dataset, epochs=settings.max_epochs, steps_per_epoch=steps, verbose=0, shuffle=False,
                  callbacks=callbacks)
        if best is None or selection.best > chosen:
            best, chosen = model, selection.best
    trained = np.zeros(catalogue.size, bool)
    trained[np.unique(targets)] = True
    trained[np.unique(inputs)] = True
    table = np.asarray(best.item_embedding.embeddings)
    best.item_embedding.embeddings.assign(np.where(trained[:, None], table, 0.0).astype(np.float32))
    if progress:
        print(f"sasrec: dropout {best.dropout_rate} chosen (validation NDCG@10 {chosen:.4f})", flush=True)
    return SASRecScorer(best)
