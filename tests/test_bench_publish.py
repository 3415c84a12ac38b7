"""The benchmarks that train, publish and serve versions (retrain, catalogue add, catalogue
scale) run on the tiny backbone and small data and write their results. Apart from
test_bench.py so that the test run's two workers share the benchmarks' time."""

import json


def test_retrain_benchmark_smoke(tiny_preset, tmp_path, monkeypatch):
    from bench import retrain

    monkeypatch.setenv("CROSSREC_CACHE", str(tmp_path / "cache"))  # a cache without these texts yet
    assert retrain.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "retrain.json").read_text())["rows"]}
    assert rows["retrain: all (merge, gate, train, export)"]["value"] > 0
    # the second half's new items were the only texts encoded
    assert rows["retrain: texts encoded"]["value"] == rows["retrain: new items / users / interactions"]["value"]


def test_catalogue_benchmark_smoke(tiny_preset, tmp_path, monkeypatch):
    from bench import catalogue

    monkeypatch.setenv("CROSSREC_CACHE", str(tmp_path / "cache"))
    assert catalogue.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "catalogue.json").read_text())["rows"]}
    assert rows["catalogue add, the new items: file to the new version's first gRPC answer"]["value"] > 0
    assert rows["catalogue add, the new items: items added"]["value"] == rows["new items"]["value"]
    assert 0 <= rows["old answers unchanged (version 2 top 10 holds no new item)"]["value"] <= 1
    assert rows["new items, ndcg@10: added / retrained"]["target"] == ">= 0.9"


def test_catalogue_scale_benchmark_smoke(tiny_preset, tmp_path):
    from bench import catalogue_scale

    assert catalogue_scale.main(["--quick", "--preset", str(tiny_preset), "--results-dir", str(tmp_path)]) == 0
    rows = {r["benchmark"]: r for r in json.loads((tmp_path / "catalogue_scale.json").read_text())["rows"]}
    sizes = [int(name.split(" to ")[1].split(":")[0].replace(",", "")) for name in rows if name.endswith(": total")]
    assert len(sizes) == 2 and sizes[1] == sizes[0] + 100
    assert all(rows[f"100 items added to {s:,}: {stage}"]["value"] > 0 for s in sizes for stage in ("publish", "load"))
    assert rows["growth exponent of total time with the catalogue"]["target"] == "<= 0.1"
