"""crossrec and every baseline through the same evaluator; the report files."""

import json

from crossrec.cli import main
from crossrec.pipelines.compare import compare_models
from crossrec.report import write_report


def test_all_models_and_slices_are_compared_and_reported(tiny_config, tmp_path):
    result = compare_models(tiny_config, zero_shot_domain="kitchen", progress=False)
    metrics = result.metrics
    assert set(metrics["model"]) == {"crossrec", "popularity", "id_two_tower", "target_only"}
    assert set(metrics["slice"]) == {"warm", "cold_start", "new_item", "zero_shot"}
    zero = metrics[metrics["slice"] == "zero_shot"]
    assert set(zero["domain"]) == {"kitchen", "all"}
    path = write_report(metrics, tmp_path / "report", title="t", histories=result.histories)
    text = path.read_text()
    assert "## NDCG@10 by slice and domain" in text and "| zero_shot | kitchen |" in text
    assert (tmp_path / "report" / "recall_at_k.png").stat().st_size > 1000
    assert (tmp_path / "report" / "training_curves.png").exists()
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]


def test_cli_train_and_evaluate(tiny_config, tmp_path, capsys):
    from crossrec.config import save_config

    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    assert main(["train", "retrieval", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet",
                 "--epochs", "1"]) == 0
    assert (tmp_path / "run" / "towers.weights.h5").exists()
    assert "trained on" in capsys.readouterr().out
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "rep"), "--quiet", "--epochs", "1",
                 "--models", "crossrec,popularity"]) == 0
    assert (tmp_path / "rep" / "report.md").exists()
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "rep2"), "--models", "nope"]) == 2
