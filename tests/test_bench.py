"""The benchmark commands run (on the tiny backbone and small data) and write their results."""

import json

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
        assert rows[f"gRPC recommender p99, 1 client, 100k items, batching {batching}"]["target"] == "<= 15"
        assert rows[f"gRPC recommender throughput, 8 client processes, batching {batching}"]["value"] > 0
    assert rows["throughput at 8 clients: batching on / off"]["target"] == ">= 2"
    assert rows["first request with warm-up / steady-state p50"]["value"] > 0


def test_batch_benchmark_smoke(tiny_preset, tmp_path):
    from bench import batch

    assert batch.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path), "--users", "300"]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "batch.json").read_text())["rows"]}
    assert rows["Beam DirectRunner"]["value"] > 0 and rows["Beam / plain loop"]["target"] == ">= 0.9"
    assert rows["roofline: bare batched matmul + top-k"]["value"] > 0 and rows["Beam / roofline"]["target"] == ">= 0.6"


def test_retrain_benchmark_smoke(tiny_preset, tmp_path, monkeypatch):
    from bench import retrain

    monkeypatch.setenv("CROSSREC_CACHE", str(tmp_path / "cache"))  # a cache without these texts yet
    assert retrain.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "retrain.json").read_text())["rows"]}
    assert rows["retrain: all (merge, gate, train, export)"]["value"] > 0
    # the second half's new items were the only texts encoded
    assert rows["retrain: texts encoded"]["value"] == rows["retrain: new items / users / interactions"]["value"]


def test_one_command_runs_the_benchmarks_and_writes_one_table_with_targets(tiny_preset, tmp_path, capsys):
    from crossrec.cli import main

    assert main(["bench", "--quick", "--only", "batch", "--preset", str(tiny_preset),
                 "--results-dir", str(tmp_path)]) == 0
    latest = json.loads((tmp_path / "latest.json").read_text())
    rows = {r["benchmark"]: r for r in latest["rows"]}
    assert rows["batch: Beam / plain loop"]["target"] == ">= 0.9" and rows["batch: Beam / plain loop"]["status"]
    assert "| batch: Beam DirectRunner |" in (tmp_path / "latest.md").read_text()
    assert "targets met" in capsys.readouterr().out
