"""The benchmark commands run (on the tiny backbone and small data) and write their results."""

import json

import pytest

from bench import towers


def test_towers_benchmark_smoke(tiny_preset, tmp_path, capsys):
    assert towers.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path),
                        "--n-users", "200"]) == 0
    rows = json.loads((tmp_path / "towers.json").read_text())["rows"]
    names = [r["benchmark"] for r in rows]
    assert "train cached-frozen, batch 1024" in names and "encoding speed-up from bucketing (max 32)" in names
    assert all(r["value"] > 0 for r in rows)
    assert "| benchmark | value |" in capsys.readouterr().out


def test_ranking_benchmark_smoke(tiny_preset, tmp_path):
    from bench import ranking

    assert ranking.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "ranking.json").read_text())["rows"]}
    assert rows["student / ranker scoring time"]["target"] == "<= 0.25"
    assert rows["ranker scoring"]["value"] > 0 and 0 <= rows["NDCG@10, retrieval order"]["value"] <= 1


def test_serving_benchmark_smoke(tiny_preset, tmp_path):
    from bench import serving

    assert serving.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "serving.json").read_text())["rows"]}
    assert 0 <= rows["ScaNN recall@10 vs exact, 20k items"]["value"] <= 1
    assert 0 <= rows["int8 brute-force recall@10 vs float32 exact, 20k items"]["value"] <= 1
    for batching in ("off", "on"):
        assert rows[f"batching {batching}, 1 clients: client p99"]["target"] == "<= 15"
        assert rows[f"batching {batching}, 2 clients: throughput"]["value"] > 0
        # the server's account of where a request's time went
        assert "signature" in rows[f"batching {batching}, 1 clients: client p50"]["note"]
    assert "queue" in rows["batching on, 2 clients: client p50"]["note"]
    assert rows["throughput at 2 clients: batching on / off"]["target"] == ">= 1.5"  # 8 in a full run
    assert rows["serving_default: cost per row, 1 row / 8 rows"]["value"] > 0
    assert rows["served list by the teacher / by the student, p50"]["value"] > 0
    assert rows["served list / towers' 50 only, p50"]["target"] == "<= 1.25"
    assert rows["first request with warm-up / steady-state p50"]["value"] > 0
    assert rows["feed / recommender request, p50"]["value"] > 0 and rows["feed / recommender request, p50"][
        "target"] == "<= 1.5"


def test_batch_benchmark_smoke(tiny_preset, tmp_path):
    from bench import batch

    assert batch.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path), "--users", "300"]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "batch.json").read_text())["rows"]}
    assert rows["Beam DirectRunner"]["value"] > 0 and rows["Beam / plain loop"]["target"] == ">= 0.9"
    assert rows["roofline: bare batched matmul + top-k"]["value"] > 0 and rows["Beam / roofline"]["target"] == ">= 0.6"


def test_batch_stress_benchmark_smoke(tiny_preset, tmp_path):
    from bench import batch_stress

    assert batch_stress.main(["--quick", "--runs", "2", "--preset", str(tiny_preset),
                              "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "batch_stress.json").read_text())["rows"]}
    assert rows["runs"]["value"] == 2 and rows["failed runs (crash or unbalanced books)"]["status"] == "met"
    assert rows["finished runs whose rows differ from the reference"]["status"] == "met"
    assert rows["queries lost by finished runs"]["status"] == "met"


def test_feed_benchmark_smoke(tiny_preset, tmp_path):
    from bench import feed

    assert feed.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path), "--users", "60"]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "feed.json").read_text())["rows"]}
    plain = "diversity 0.0, calibration 0.0"
    assert 0 <= rows[f"{plain}: ndcg@10"]["value"] <= 1 and 0 < rows[f"{plain}: coverage"]["value"] <= 1
    # calibration pulls the list towards the history's domain shares
    assert rows["diversity 0.0, calibration 1.0: kl"]["value"] < rows[f"{plain}: kl"]["value"]
    assert rows["chosen setting: calibration KL / score order"]["target"] == "<= 0.5"
    assert (tmp_path / "feed_tradeoff.png").stat().st_size > 0


def test_one_command_runs_the_benchmarks_and_writes_one_table_with_targets(tiny_preset, tmp_path, capsys):
    from crossrec.cli import main

    assert main(["bench", "--quick", "--only", "batch", "--preset", str(tiny_preset),
                 "--results-dir", str(tmp_path)]) == 0
    latest = json.loads((tmp_path / "latest.json").read_text())
    rows = {r["benchmark"]: r for r in latest["rows"]}
    assert rows["batch: Beam / plain loop"]["target"] == ">= 0.9" and rows["batch: Beam / plain loop"]["status"]
    assert "| batch: Beam DirectRunner |" in (tmp_path / "latest.md").read_text()
    assert "targets met" in capsys.readouterr().out


def test_scale_benchmark_fits_growth_exponents_and_plots(tmp_path, capsys):
    """The scale benchmark's arithmetic and outputs on made-up points with known growth, and
    one real stage run the way each stage is measured (a crossrec command after its imports)."""
    from bench import scale
    from bench.common import Results
    from crossrec.data.synth import generate

    from conftest import TINY

    sizes = [1, 4, 16]
    assert scale.exponent(sizes, [3 * s ** 1.5 for s in sizes]) == pytest.approx(1.5)
    points = [{"scale": s, "n_users": 10 * s, "n_items": 20 * s, "interactions": 100 * s,
               "stages": {st: {"seconds": 2.0 * s, "peak_mb": 500 + 10 * s, "imports_mb": 500} for st in scale.STAGES},
               "train_parts": {"data": 0.1 * s, "text encoding": 1.0, "epoch": 0.5 * s ** 1.2, "evaluation": 0.01 * s * s}}
              for s in sizes]
    results = Results("scale")
    scale.report(points, results)
    rows = {r.benchmark: r for r in results.rows}
    assert rows["train, epoch: time exponent"].value == pytest.approx(1.2)
    assert rows["train, epoch: time exponent"].status == "MISSED"  # target <= 1.1
    assert rows["train: memory above the imports, exponent"].value == pytest.approx(1.0)
    assert rows["train: peak memory exponent"].status == "met"
    scale.plot(points, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"

    data = tmp_path / "data"
    generate(TINY).save(data)
    capsys.readouterr()
    assert scale.child(["data", "validate", "--data", str(data)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(scale.MARK)][-1]
    measured = json.loads(line[len(scale.MARK):])
    assert measured["code"] == 0 and measured["seconds"] > 0 and measured["peak_mb"] >= measured["imports_mb"] > 100


def test_monitoring_benchmark_smoke(tiny_preset, tmp_path):
    from bench import monitoring

    assert monitoring.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "monitoring.json").read_text())["rows"]}
    assert rows["metrics on / off, p50"]["target"] == "<= 1.05" and rows["metrics on / off, p50"]["value"] > 0
    assert rows["one scrape of the registry"]["value"] > 0
    assert rows["answer metrics' own work / p50 with metrics off"]["target"] == "<= 0.05"


def test_drift_benchmark_smoke(tiny_preset, tmp_path):
    from bench import drift

    assert drift.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "drift.json").read_text())["rows"]}
    assert rows["built-in, the later 20%, kitchen nearly gone: domain_shares PSI"]["value"] > 0.25
    assert rows["built-in, held-out users of the training period: domain_shares PSI"]["value"] < 0.1


def test_adapt_benchmark_smoke(tiny_preset, tmp_path):
    from bench import adapt

    assert adapt.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "adapt.json").read_text())["rows"]}
    assert rows["adaptation step, top 1 layer(s) over stored states"]["value"] > 0
    assert rows["the same step with LoRA over the whole backbone"]["value"] > 0
    assert 0 <= rows["held-out pairs' Recall@10, adapted encoder"]["value"] <= 1
    assert rows["peak resident memory"]["value"] > 0
