"""Towers benchmark: training examples/s per freeze policy and text encoding items/s.

    python -m bench.towers [--quick]

- cached-frozen at batch 1024: the frozen encoder's item vectors come from the cache (target
  >= 50,000 examples/s on 2 cores, from issue 3);
- frozen (no cache), LoRA and full fine-tuning at batch 64: the backbone runs in every step;
- encoding items/s of the catalogue's texts: length-bucketed batches vs. padding every text to the
  maximum length in a plain loop (target: bucketing >= 2x).
Uses the built-in data and the real all-MiniLM-L6-v2 weights.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from bench.common import Results, bench_parser
from crossrec import schema
from crossrec.config import Config, EncoderConfig, SynthConfig, TrainConfig
from crossrec.experiment import prepare_data
from crossrec.features import Sequences
from towers.encoder import TextEncoder
from towers.inputs import make_dataset
from towers.optimizer import towers_optimizer
from towers.text import text_vectors
from towers.train import build_model, training_input


def training_speed(config: Config, data, steps: int, attempts: int = 4) -> float:
    """Steady-state examples per second of ``model.fit`` (wall clock, input pipeline included):
    the median of ``attempts - 1`` identical ``fit`` calls after one more that traces the graphs."""
    text = text_vectors(config, data.catalogue)
    model = build_model(config, data, text)
    model.compile(optimizer=towers_optimizer(model, config.train.learning_rate, config.train.weight_decay),
                  steps_per_execution=config.train.steps_per_execution)
    inputs, rows = training_input(config, data)  # windows, or user sequences (targets counted)
    per_row = inputs.targets / len(inputs) if isinstance(inputs, Sequences) else 1.0
    speeds = []
    for attempt in range(attempts):
        dataset = make_dataset(inputs, rows).repeat().take(steps)
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0)
        if attempt:  # the first call traces
            speeds.append(steps * rows * per_row / (time.perf_counter() - start))
    return float(np.median(speeds))


def encoding_speed(encoder: TextEncoder, texts: list[str]) -> tuple[float, float]:
    tokens = encoder.tokenize(texts)
    encoder.encode_tokens(tokens[:256])  # trace once
    start = time.perf_counter()
    encoder.encode_tokens(tokens, bucket=True)
    bucketed = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    encoder.encode_tokens(tokens, bucket=False)
    padded = len(texts) / (time.perf_counter() - start)
    return bucketed, padded


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "fewer steps and texts (a smoke run)")
    parser.add_argument("--n-users", type=int, default=SynthConfig.n_users, help="built-in data size")
    args = parser.parse_args(argv)
    results = Results("towers")
    synth = replace(SynthConfig(), n_users=args.n_users,
                    n_interactions=SynthConfig.n_interactions * args.n_users // SynthConfig.n_users)
    base = Config(data=replace(Config().data, synth=synth), encoder=EncoderConfig(preset=args.preset))
    data = prepare_data(base)
    print(f"built-in data: {len(data.examples)} training examples, {len(data.catalogue)} items")

    attempts = 2 if args.quick else 4
    cached = replace(base, train=replace(base.train, batch_size=1024))
    results.add("train cached-frozen, batch 1024", training_speed(cached, data, steps=16 if args.quick else 48, attempts=attempts),
                "examples/s", ">= 50000", note="history 32, steps_per_execution 8")
    sequences = replace(cached, train=replace(cached.train, examples="sequences"))
    results.add("train cached-frozen, user sequences, ~1024 targets a batch",
                training_speed(sequences, data, steps=16 if args.quick else 48, attempts=attempts), "examples/s", ">= 50000",
                note="train.examples: sequences (a query at every position of each user's sequence)")
    steps = 2 if args.quick else 6
    for name, encoder in [("frozen (no cache)", replace(base.encoder, cache=False)),
                          ("lora rank 4", replace(base.encoder, freeze="lora", lora_rank=4)),
                          ("full fine-tuning", replace(base.encoder, freeze="full"))]:
        config = replace(base, encoder=encoder, train=TrainConfig(batch_size=64, steps_per_execution=1))
        results.add(f"train {name}, batch 64", training_speed(config, data, steps=steps, attempts=attempts), "examples/s")

    texts = data.catalogue.items[schema.TEXT].tolist()[: 500 if args.quick else 3000]
    limit = TextEncoder(base.encoder).backbone.max_sequence_length
    for length, target in [(32, ">= 2"), (128, "")]:
        if length > limit:
            continue
        encoder = TextEncoder(replace(base.encoder, sequence_length=length))
        bucketed, padded = encoding_speed(encoder, texts)
        results.add(f"encode items, length-bucketed (max {length} tokens)", bucketed, "items/s")
        results.add(f"encode items, all padded to {length}", padded, "items/s")
        results.add(f"encoding speed-up from bucketing (max {length})", bucketed / padded, "x", target)
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
