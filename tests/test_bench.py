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
