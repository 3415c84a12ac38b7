"""Adaptation benchmark: what adapting the text encoder to the catalogue costs (``towers.adapt``).

    python -m bench.adapt [--quick] [--config FILE] [--budget MINUTES]

On one data set (the built-in data by default; ``--config`` names another, e.g. Amazon
Arts/Office) it measures, in one process:
- the adaptation step's pairs/s with the top 1 and 2 layers training over states computed once,
  against LoRA (rank 4) over the whole backbone, the policy that trains every layer's adapters and
  so must run every layer per step: the ratio is measured here, in one run;
- one whole adaptation within ``--budget`` minutes (its own empty cache): encoding below the
  trained layers, steps, pairs/s, held-out pairs' Recall@10 before and after, seconds;
- the towers' own training on the same data (frozen encoder, vectors cached), for scale;
- the process's peak resident memory.
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import replace

import keras
import numpy as np
import tensorflow as tf

from bench.common import Results, bench_parser
from crossrec.config import Config, DataConfig, SynthConfig, load_config


def _pairs_per_second(step, batches, size: int) -> float:
    step(*batches[0])  # traced
    started = time.perf_counter()
    for batch in batches[1:]:
        step(*batch)
    return size * (len(batches) - 1) / (time.perf_counter() - started)


def step_speed(results: Results, config: Config, texts: list[str], size: int, steps: int) -> None:
    from towers.adapt_fit import TopLayers, _step_function, contrastive_loss
    from towers.encoder import TextEncoder

    rng = np.random.default_rng(0)
    speeds = {}
    depth = sum(layer.name.startswith("transformer_layer_") for layer in TextEncoder(config.encoder).backbone.layers)
    for layers in range(1, min(2, depth - 1) + 1):
        encoder = TextEncoder(config.encoder)
        top = TopLayers(encoder, layers)
        tokens = encoder.tokenize(texts[:2 * size])
        states = top._lower(tf.constant(tokens)).numpy().astype(np.float16)
        masks = tokens != encoder.pad_id
        optimizer = keras.optimizers.AdamW(5e-5)
        step = _step_function(top, optimizer, 0.05)
        items = tf.constant(np.arange(size, dtype=np.int64))
        batches = [(states[rng.permutation(2 * size)[:size]], masks[:size], states[size:], masks[size:], items, items)
                   for _ in range(steps + 1)]
        speeds[layers] = _pairs_per_second(step, batches, size)
        results.add(f"adaptation step, top {layers} layer(s) over stored states", speeds[layers], "pairs/s")
    encoder = TextEncoder(config.encoder)
    encoder.backbone.enable_lora(4)  # keras-hub: only the attention layers' low-rank adapters train
    layer, optimizer = encoder.layer, keras.optimizers.AdamW(1e-4)
    weights = layer.trainable_weights

    @tf.function(reduce_retracing=True)
    def lora_step(ids_a, ids_b, items):
        with tf.GradientTape() as tape:
            a = tf.math.l2_normalize(layer(ids_a, training=True), -1)
            b = tf.math.l2_normalize(layer(ids_b, training=True), -1)
            loss = contrastive_loss(a, b, items, items, 0.05)
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))

    tokens = encoder.tokenize(texts[:2 * size])
    items = tf.constant(np.arange(size, dtype=np.int64))
    lora = _pairs_per_second(lora_step, [(tokens[:size], tokens[size:], items)] * (steps + 1), size)
    results.add("the same step with LoRA over the whole backbone", lora, "pairs/s")
    results.add("top 1 layer over stored states / LoRA over the backbone", speeds[1] / lora, "x")


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "the built-in data at a tenth of its size, a one-minute budget")
    parser.add_argument("--config", help="a crossrec config naming the data (default: the built-in data)")
    parser.add_argument("--budget", type=float, default=5.0, help="the adaptation's budget in minutes (default 5)")
    args = parser.parse_args(argv)
    from crossrec.experiment import prepare_data
    from towers.adapt import adapt_encoder
    from towers.train import train_retrieval

    results = Results("adapt")
    config = load_config(args.config) if args.config else Config(
        data=DataConfig(synth=SynthConfig(n_users=300, n_items=450, n_interactions=9000) if args.quick
                        else SynthConfig()))
    budget = 1.0 if args.quick else args.budget
    with tempfile.TemporaryDirectory() as cache:
        encoder = replace(config.encoder, cache_dir=cache, preset=args.preset or config.encoder.preset,
                          adapt=replace(config.encoder.adapt, enabled=True))
        config = replace(config, encoder=encoder)
        data = prepare_data(config)
        texts = data.catalogue.items["text"].tolist()
        step_speed(results, config, texts, size=64 if args.quick else 128, steps=3 if args.quick else 8)
        started = time.perf_counter()
        _, adaptation = adapt_encoder(config, data.train, data.catalogue, progress=True, budget_minutes=budget)
        report = adaptation.report
        note = f"{report['trained_pairs']:,} pairs, {report['items']:,} items, budget {budget} min" + (
            ", stopped by it" if report["stopped_by_budget"] else "")
        results.add("adaptation, wall time", time.perf_counter() - started, "s", note=note)
        results.add("adaptation, encoding below the trained layers", report["encode_seconds"], "s")
        results.add("adaptation, pairs/s in training", report["pairs_per_second"], "pairs/s")
        results.add("adaptation, epochs over the pairs", report["epochs"], "epochs")
        results.add("held-out pairs' Recall@10, pretrained encoder", report["recall_at_10_before"], "")
        results.add("held-out pairs' Recall@10, adapted encoder", report["recall_at_10_after"], "")
        started = time.perf_counter()
        run = train_retrieval(config, data=data, progress=True, test=False)
        towers = time.perf_counter() - started
        results.add("the towers' own training (frozen encoder, encoding included)", towers, "s",
                    note=f"{len(run.history.get('loss', []))} epochs")
        results.add("adaptation / the towers' training", (report["seconds"]) / towers, "x")
    results.add("peak resident memory", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MiB")
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
