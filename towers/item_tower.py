"""``ItemTower``: an item's text vector -> the shared embedding space, through a domain-agnostic
text path (a two-layer MLP, or UniSRec's mixture of whitening experts) plus a per-domain residual
adapter, plus an optional item-ID embedding (hybrid). The domain adapter is dropped for a share of
training items (``domain_dropout``), so the agnostic path alone is trained too: a domain never seen
in training (domain index 0) uses only it. The ID embedding is dropped for a share of items
(``item_id_dropout``) so text alone stays strong; items unseen in training have no ID embedding at
all (row marked in ``id_known``).

Fusion of the two parts: ``sum`` adds them (their norms decide the mix), ``gate`` mixes the unit
text and ID vectors by a learned per-item gate g = sigmoid(a log(1 + n) + b + w.h) on the item's
training-interaction count n and its text (h): frequent items can lean on their IDs, rare items
on their text, and an item without an ID embedding (new, or dropped) has g = 0."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="crossrec")
class ItemTower(keras.layers.Layer):
    def __init__(self, num_items: int, num_domains: int, text_dim: int, embedding_dim: int = 64,
                 use_text: bool = True, use_item_ids: bool = True, item_id_dropout: float = 0.5,
                 domain_dropout: float = 0.2, dropout: float = 0.1, id_embedding_init: str = "random",
                 text_experts: int = 0, fusion: str = "sum", **kwargs):
        super().__init__(**kwargs)
        if fusion not in ("sum", "gate"):
            raise ValueError(f"fusion must be 'sum' or 'gate', not {fusion!r}")
        self.fusion = fusion
        self.id_embedding_init = id_embedding_init
        self.text_experts = text_experts
        if not use_text and not use_item_ids:
            raise ValueError("ItemTower needs text, item ids, or both (use_text and use_item_ids are both false)")
        self.num_items = num_items
        self.num_domains = num_domains
        self.text_dim = text_dim
        self.embedding_dim = embedding_dim
        self.use_text = use_text
        self.use_item_ids = use_item_ids
        self.item_id_dropout = item_id_dropout
        self.domain_dropout = domain_dropout
        self.dropout = dropout
        # Its own seed state, made here: an unseeded keras.random call would create a global one
        # inside the first traced step, which a distribution strategy refuses.
        self.seed_generator = keras.random.SeedGenerator()
        if use_text:
            self.shared_hidden = keras.layers.Dense(2 * embedding_dim, activation="gelu", name="shared_hidden")
            if not text_experts:  # the shared text path: an MLP's second layer, or the experts below
                self.shared_out = keras.layers.Dense(embedding_dim, name="shared_out")
            # One residual adapter per domain on the shared hidden layer, all computed together.
            self.domain_adapters = keras.layers.EinsumDense(
                "bh,hde->bde", output_shape=(num_domains, embedding_dim), name="domain_adapters",
                kernel_initializer="zeros")
            self.text_dropout = keras.layers.Dropout(dropout)
            if text_experts:
                # UniSRec's MoE adapter: K parametric-whitening experts (x - b_k) W_k, mixed by a
                # softmax gate on the text vector: the shared text path.
                self.expert_bias = self.add_weight(shape=(text_experts, text_dim), initializer="zeros",
                                                   name="expert_bias")
                self.expert_kernel = self.add_weight(shape=(text_experts, text_dim, embedding_dim),
                                                     initializer="glorot_uniform", name="expert_kernel")
                self.expert_gate = keras.layers.Dense(text_experts, name="expert_gate")
        if use_item_ids:
            # In the hybrid the ID part starts at zero, so an item's ID embedding is only what its
            # interactions taught it: rare items stay close to their text instead of carrying
            # random noise (ID-only towers need a random start to break symmetry).
            init = (keras.initializers.Zeros() if use_text and id_embedding_init == "zeros"
                    else keras.initializers.RandomNormal(0, 0.05))
            self.id_embedding = keras.layers.Embedding(num_items, embedding_dim, name="item_id_embedding",
                                                       embeddings_initializer=init)
        self.gated = fusion == "gate" and use_text and use_item_ids
        if self.gated:
            # Starts at g = sigmoid(log(1 + n) - 2): 0.2 for an item seen once, 0.9 at 50 interactions.
            self.gate_count = self.add_weight(shape=(), initializer="ones", name="gate_count")
            self.gate_bias = self.add_weight(shape=(), initializer=keras.initializers.Constant(-2.0),
                                             name="gate_bias")
            self.gate_text = keras.layers.Dense(1, kernel_initializer="zeros", use_bias=False, name="gate_text")

    def build(self, *args, **kwargs):
        """Every sub-layer built from the tower's own sizes (its inputs' shapes add nothing), so
        Keras never meets unbuilt state on the first call."""
        hidden = (None, 2 * self.embedding_dim)
        if self.use_text:
            self.shared_hidden.build((None, self.text_dim))
            if not self.text_experts:
                self.shared_out.build(hidden)
            else:
                self.expert_gate.build((None, self.text_dim))
            self.domain_adapters.build(hidden)
        if self.use_item_ids:
            self.id_embedding.build((None,))
        if self.gated:
            self.gate_text.build(hidden)
        self.built = True

    def call(self, text, domain, row, id_known, log_count=None, training=False):
        # text: (b, text_dim) float; domain, row: (b,) int; id_known: (b,) bool;
        # log_count: (b,) float log(1 + training interactions), read by the gate only
        text_part, hidden = self._text_part(text, domain, training) if self.use_text else (None, None)
        if self.gated:
            return self._gated(text_part, hidden, row, self._id_keep(id_known, training), log_count)
        return self.combine(text_part, self._id_part(row, id_known, training))

    def parts(self, text, domain, row, id_known, training=False):
        """(text part, ID part) of the ``sum`` fusion, before they are added and normalised:
        ``combine(t, i)`` is the item's embedding and ``combine(t, None)`` its text-only one, from
        one pass of the text path."""
        if self.gated:
            raise ValueError("parts() is the sum fusion's; fusion: gate mixes inside the tower")
        return (self._text_part(text, domain, training)[0] if self.use_text else None,
                self._id_part(row, id_known, training))

    @staticmethod
    def combine(text_part, id_part):
        present = [p for p in (text_part, id_part) if p is not None]
        return ops.normalize(present[0] if len(present) == 1 else present[0] + present[1], axis=-1)

    def _text_part(self, text, domain, training):
        text = self.text_dropout(text, training=training)
        hidden = self.shared_hidden(text)  # (b, 2e)
        if self.text_experts:
            # every expert in one (b, d) x (d, k e) matmul: a third faster, forward and backward,
            # than the einsum "bd,kde->bke" on 2 CPU cores (bench.towers' step split)
            k, d, e = self.expert_kernel.shape
            kernel = ops.reshape(ops.transpose(self.expert_kernel, (1, 0, 2)), (d, k * e))
            experts = (ops.reshape(ops.matmul(text, kernel), (-1, k, e))
                       - ops.einsum("kd,kde->ke", self.expert_bias, self.expert_kernel)[None])
            mix = ops.softmax(self.expert_gate(text), axis=-1)
            shared = ops.sum(mix[..., None] * experts, axis=1)
        else:
            shared = self.shared_out(hidden)  # (b, e)
        if training and self.domain_dropout > 0:
            drop = keras.random.uniform(ops.shape(domain), seed=self.seed_generator) < self.domain_dropout
            domain = ops.where(drop, ops.zeros_like(domain), domain)
        per_domain = self.domain_adapters(hidden)  # (b, domains, e)
        pick = ops.one_hot(domain, self.num_domains)[..., None]  # (b, domains, 1); domain 0 = agnostic only
        pick = pick * ops.cast(ops.arange(self.num_domains) > 0, pick.dtype)[None, :, None]
        return shared + ops.sum(per_domain * pick, axis=1), hidden  # the gate reads hidden

    def _id_keep(self, id_known, training):
        keep = ops.cast(id_known, "float32")
        if training and self.item_id_dropout > 0 and self.use_text:
            kept = keras.random.uniform(ops.shape(keep), seed=self.seed_generator) >= self.item_id_dropout
            keep = keep * ops.cast(kept, "float32")
        return keep

    def _id_part(self, row, id_known, training):
        if not self.use_item_ids:
            return None
        return self.id_embedding(row) * self._id_keep(id_known, training)[:, None]

    def _gated(self, text_part, hidden, row, keep, log_count):
        logit = self.gate_bias + self.gate_text(hidden)[:, 0]
        if log_count is not None:
            logit = logit + self.gate_count * ops.cast(log_count, logit.dtype)
        gate = (ops.sigmoid(logit) * keep)[:, None]
        text_part = ops.normalize(text_part, axis=-1)
        return ops.normalize((1.0 - gate) * text_part + gate * ops.normalize(self.id_embedding(row), axis=-1),
                             axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in (
            "num_items", "num_domains", "text_dim", "embedding_dim", "use_text", "use_item_ids",
            "item_id_dropout", "domain_dropout", "dropout", "id_embedding_init", "text_experts", "fusion")})
        return config
