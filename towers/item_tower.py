"""``ItemTower``: an item's text vector -> the shared embedding space, through a domain-agnostic
text path (a two-layer MLP, or UniSRec's mixture of whitening experts) plus a per-domain residual
adapter, plus an optional item-ID embedding (hybrid). The domain adapter is dropped for a share of
training items (``domain_dropout``), so the agnostic path alone is trained too: a domain never seen
in training (domain index 0) uses only it. The ID embedding is dropped for a share of items
(``item_id_dropout``) so text alone stays strong; items unseen in training have no ID embedding at
all (row marked in ``id_known``). The text and ID parts are added (their norms decide the mix)
and normalised; a learned per-item gate measured no better (docs: design notes)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="crossrec")
class ItemTower(keras.layers.Layer):
    def __init__(self, num_items: int, num_domains: int, text_dim: int, embedding_dim: int = 64,
                 use_text: bool = True, use_item_ids: bool = True, item_id_dropout: float = 0.5,
                 domain_dropout: float = 0.2, dropout: float = 0.1, text_experts: int = 0, **kwargs):
        super().__init__(**kwargs)
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
            self.id_embedding = keras.layers.Embedding(num_items, embedding_dim, name="item_id_embedding",
                                                       embeddings_initializer=keras.initializers.RandomNormal(0, 0.05))

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
        self.built = True

    def call(self, text, domain, row, id_known, training=False):
        # text: (b, text_dim) float; domain, row: (b,) int; id_known: (b,) bool
        return self.combine(*self.parts(text, domain, row, id_known, training=training))

    def parts(self, text, domain, row, id_known, training=False):
        """(text part, ID part), before they are added and normalised: ``combine(t, i)`` is the
        item's embedding and ``combine(t, None)`` its text-only one, from one pass of the text path."""
        return (self._text_part(text, domain, training) if self.use_text else None,
                self._id_part(row, id_known, training))

    def text_embedding(self, text, domain):
        """The item's embedding from its text alone (a new item: no ID part), at inference."""
        return self.combine(self._text_part(text, domain, training=False), None)

    def text_path_weights(self) -> list:
        """The weights ``text_embedding`` reads: every weight but the per-item ID table."""
        table = {id(w) for w in self.id_embedding.weights} if self.use_item_ids else set()
        return [w for w in self.weights if id(w) not in table]

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
        return shared + ops.sum(per_domain * pick, axis=1)

    def _id_part(self, row, id_known, training):
        if not self.use_item_ids:
            return None
        keep = ops.cast(id_known, "float32")
        if training and self.item_id_dropout > 0 and self.use_text:
            kept = keras.random.uniform(ops.shape(keep), seed=self.seed_generator) >= self.item_id_dropout
            keep = keep * ops.cast(kept, "float32")
        return self.id_embedding(row) * keep[:, None]

    def get_config(self):
        config = super().get_config()
        config.update({k: getattr(self, k) for k in (
            "num_items", "num_domains", "text_dim", "embedding_dim", "use_text", "use_item_ids",
            "item_id_dropout", "domain_dropout", "dropout", "text_experts")})
        return config
