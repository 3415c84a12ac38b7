"""Catalogue-size benchmark: what adding 10,000 items costs as the served catalogue grows.

    python -m bench.catalogue_scale [--sizes 10000,100000,1000000] [--add 10000] [--quick]

``crossrec catalogue add`` should cost time in proportion to the items added, not to the
catalogue. A served version is trained on the built-in data (one epoch) and exported; its
catalogue is grown to each size by ``crossrec catalogue add`` itself (copies of the built-in
items, an edition number in their titles), and at each size ``--add`` more items are added and
timed by stage: encode, state (the changed towers and rankers), publish (every served model
written, renamed into place), and the load of the new version's models by crossrec's model
manager with their warm-up requests (what ``crossrec serve`` does before it answers). For each
stage the growth exponent a of seconds ~ size^a is fitted (bench.scale's fit): a = 0 is a cost
of the added items alone, a = 1 one in proportion to the catalogue.

The text encoder is a small random BERT made here (``--preset`` for another): encoding is the
one stage whose cost is the added items' alone, bench.catalogue measures it with the real
encoder, and growing a catalogue to 1M items through the real one would take an hour of the
2 cores. Peak memory is the process's resident high-water mark.
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from bench.catalogue import _train_and_export
from bench.common import Results, bench_parser
from bench.scale import exponent
from crossrec import schema

STAGES = ("encode", "state", "publish", "load")


def _copies(items: pd.DataFrame, n: int, start: int) -> pd.DataFrame:
    """``n`` items made of ``items`` (cycled), numbered from ``start``: a new id and an edition
    number in the title, every other column as it is."""
    rows = items.iloc[[i % len(items) for i in range(n)]].reset_index(drop=True)
    number = pd.Series(range(start, start + n)).astype(str)
    return rows.assign(**{schema.ITEM_ID: rows[schema.ITEM_ID].astype(str) + "-e" + number,
                          schema.TITLE: rows[schema.TITLE].astype(str) + " (edition " + number + ")"})


def _load_seconds(base: Path, version: int) -> float:
    """Seconds to load every model of ``version`` with its warm-up requests, as the server does."""
    from serving.models import load_saved_model

    started = time.perf_counter()
    for model in sorted(p.name for p in base.iterdir() if (p / str(version)).is_dir()):
        load_saved_model(model, version, base / model / str(version))
    return time.perf_counter() - started


def _add(work: Path, items: pd.DataFrame, label: str) -> dict:
    """``crossrec catalogue add`` of ``items`` into ``work / "saved_models"``: seconds per stage."""
    from crossrec.pipelines.catalogue import add_items

    path = work / f"{label}.parquet"
    items.to_parquet(path, index=False)
    result = add_items(path, work / "saved_models", work_dir=work / "catalogue", progress=False)
    version = next(iter(result.published.values()))
    return {**{k: v for k, v in result.seconds.items() if k != "total"},
            "load": _load_seconds(work / "saved_models", version)}


def main(argv=None) -> int:
    from bench.tiny_encoder import make_tiny_preset
    from crossrec.config import Config, SynthConfig
    from crossrec.data.dataset import Dataset
    from crossrec.data.loaders import load_dataset, text_template

    parser = bench_parser(__doc__, "small data, 100 items added twice, no growth in between (a smoke run)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes (items, comma-separated)")
    parser.add_argument("--add", type=int, default=10_000, help="items added at each size")
    args = parser.parse_args(argv)
    added = 100 if args.quick else args.add
    results = Results("catalogue_scale")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        preset = args.preset or str(make_tiny_preset(work / "tiny_bert"))
        config = Config()
        synth = SynthConfig(n_users=120, n_items=180, n_interactions=3000) if args.quick else config.data.synth
        config = replace(config, data=replace(config.data, synth=synth, text_template=text_template(config.data)),
                         encoder=replace(config.encoder, preset=preset, cache_dir=str(work / "text_cache")),
                         train=replace(config.train, epochs=1), ranking=replace(config.ranking, epochs=1))
        data = load_dataset(config.data).clean()
        Dataset(data.interactions.drop(columns=["split", "role"], errors="ignore"), data.items).save(work / "data")
        _train_and_export(config, work / "data", work / "run", work / "saved_models")
        base_items = data.items.drop(columns=[schema.TEXT])
        size, made = len(base_items), 0
        sizes = [size + added, size + 2 * added] if args.quick else [int(s) for s in args.sizes.split(",")]
        points = []
        for target in sizes:
            if target - added > size:  # grow the catalogue (not timed), then add the measured items
                _add(work, _copies(base_items, target - added - size, made), f"grow-{target}")
                made, size = made + target - added - size, target - added
            seconds = _add(work, _copies(base_items, added, made), f"add-{target}")
            made, size = made + added, size + added
            points.append({"size": size, **seconds})
            for stage in STAGES:
                results.add(f"{added:,} items added to {size:,}: {stage}", seconds[stage], "s")
            results.add(f"{added:,} items added to {size:,}: total", sum(seconds[s] for s in STAGES), "s")
        catalogue = [p["size"] for p in points]
        for stage in (*STAGES, "total"):
            values = [sum(p[s] for s in STAGES) if stage == "total" else p[stage] for p in points]
            results.add(f"growth exponent of {stage} time with the catalogue", exponent(catalogue, values), "a",
                        "<= 0.1" if stage == "total" else "",
                        note=f"{catalogue[0]:,} to {catalogue[-1]:,} items; 0: the added items' cost alone")
        results.add("peak memory", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MB")
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
