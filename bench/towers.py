"""Towers benchmark: training examples/s, the default step against the machine's roofline, and
text encoding items/s.

    python -m bench.towers [--quick]

- cached-frozen at batch 1024: the frozen encoder's item vectors come from the cache (target
  >= 50,000 examples/s on 2 cores, from issue 3);
- the roofline (``bench.roofline``): one step's FLOPs, this machine's float32 matmul rate measured
  in the same run, examples/s / (rate / FLOPs per example) (target >= 0.5), and the step's time
  split into input pipeline, forward, backward and optimizer update;
- encoding items/s of the catalogue's texts: length-bucketed batches vs. padding every text to the
  maximum length in a plain loop (target: bucketing >= 2x).
Uses the built-in data and the real all-MiniLM-L6-v2 weights.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from bench.against import against
from bench.common import Results, bench_parser
from bench.roofline import distinct_items, input_seconds, matmul_rate, step_flops, step_split
from crossrec import schema
from crossrec.config import Config, EncoderConfig, SynthConfig
from crossrec.experiment import prepare_data
from towers.encoder import TextEncoder
from towers.inputs import make_dataset
from towers.optimizer import rows_per_step, towers_optimizer
from towers.text import text_vectors
from towers.train import build_model


def training_speed(config: Config, data, steps: int, attempts: int = 4) -> float:
    """Steady-state examples per second of ``model.fit`` (wall clock, input pipeline included):
    the median of ``attempts - 1`` identical ``fit`` calls after one more that traces the graphs."""
    text = text_vectors(config, data.catalogue)
    model = build_model(config, data, text)
    model.compile(optimizer=towers_optimizer(model, config.train.learning_rate, config.train.weight_decay,
                                             rows_per_step=rows_per_step(config)),
                  steps_per_execution=config.train.steps_per_execution)
    rows = config.train.batch_size
    speeds = []
    for attempt in range(attempts):
        dataset = make_dataset(data.examples, rows).repeat().take(steps)
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)  # tf.data already shuffles
        if attempt:  # the first call traces
            speeds.append(steps * rows / (time.perf_counter() - start))
    return float(np.median(speeds))


def roofline(config: Config, data, speed: float, rate_before: float, results: Results) -> None:
    """The default step against this machine's matmul roofline, and where its time goes. The
    matmul rate is the mean of ``rate_before`` (measured just before ``speed``) and one measured
    now: this machine's speed drifts between minutes."""
    text = text_vectors(config, data.catalogue)
    model = build_model(config, data, text)
    optimizer = towers_optimizer(model, config.train.learning_rate, config.train.weight_decay,
                                 rows_per_step=rows_per_step(config))
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    rows = config.train.batch_size
    dataset = make_dataset(data.examples, rows)
    batches = [b[0] if isinstance(b, tuple) else b for b in dataset.take(8)]
    flops = step_flops(model, rows, distinct_items(batches))
    rate = (rate_before + matmul_rate()) / 2
    ceiling = rows / (flops / rate)
    results.add("matmul rate (float32, 2048 x 2048)", rate / 1e9, "GFLOP/s", note="measured in this run, just before and just after the training speed")
    results.add("training step FLOPs, default model, batch 1024", flops / 1e9, "GFLOP",
                note="from the layer shapes on the batches' distinct items; backward = 2 x forward, less the input gradient of the layers reading the frozen text")
    results.add("roofline: examples/s at the matmul rate", ceiling, "examples/s")
    results.add("train cached-frozen, batch 1024 / roofline", speed / ceiling, "x", ">= 0.5")
    split = step_split(model, optimizer, batches[0])
    split["input pipeline"] = input_seconds(dataset.repeat(), 20)
    for part in ("input pipeline", "forward", "backward", "optimizer", "step"):
        results.add(f"step time: {part}", split[part] * 1000, "ms",
                    note="forward includes the loss; input pipeline runs beside the step in fit" if part == "step" else "")


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
    parser.add_argument("--against", metavar="REV", help="also measure the default training speed of git revision "
                                                           "REV side by side with this tree (bench.against)")
    args = parser.parse_args(argv)
    results = Results("towers")
    synth = replace(SynthConfig(), n_users=args.n_users,
                    n_interactions=SynthConfig.n_interactions * args.n_users // SynthConfig.n_users)
    base = Config(data=replace(Config().data, synth=synth), encoder=EncoderConfig(preset=args.preset))
    data = prepare_data(base)
    print(f"built-in data: {len(data.examples)} training examples, {len(data.catalogue)} items")

    attempts = 2 if args.quick else 4
    cached = replace(base, train=replace(base.train, batch_size=1024))
    rate_before = matmul_rate()
    speed = training_speed(cached, data, steps=16 if args.quick else 48, attempts=attempts)
    results.add("train cached-frozen, batch 1024", speed, "examples/s", ">= 50000",
                note="history 32, steps_per_execution 8")
    roofline(cached, data, speed, rate_before, results)
    if args.against:
        compared = against(args.against, rounds=2 if args.quick else 3, steps=16 if args.quick else 48)
        results.add(f"train cached-frozen, batch 1024, at {args.against}", float(np.median(compared["before"])),
                    "examples/s", note="median of fresh processes alternating with this tree's")
        results.add("train cached-frozen, batch 1024, this tree (same run)", float(np.median(compared["after"])),
                    "examples/s")
        results.add(f"speed-up over {args.against}", compared["ratio"], "x", ">= 3")

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
