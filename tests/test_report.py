"""The evaluation report a person reads: one colour per model in every plot, one legend, curves at
0 visible, blanks (never nan) for missing cells, and a summary first."""

import numpy as np
import pandas as pd

from crossrec.report import (
    _markdown,
    model_colors,
    recall_figure,
    summary_lines,
    training_figure,
    write_report,
)


def metrics_frame() -> pd.DataFrame:
    rows = []
    for slice_name, models in (("warm", ["crossrec", "id_two_tower", "popularity"]),
                               ("zero_shot", ["crossrec", "popularity"])):
        for i, model in enumerate(models):
            value = 0.0 if model == "popularity" else 0.06 - 0.01 * i
            rows.append({"model": model, "slice": slice_name, "domain": "all", "queries": 500,
                         "recall@10": value, "recall@50": 2 * value, "ndcg@10": value,
                         "ndcg@10_lo": max(0.0, value - 0.005), "ndcg@10_hi": value + 0.005, "mrr": value})
    return pd.DataFrame(rows)


def test_each_model_has_one_colour_in_every_panel_and_one_legend():
    metrics = metrics_frame()
    colors = model_colors(metrics["model"])
    assert len(set(colors.values())) == 3 and model_colors(reversed(list(metrics["model"]))) == colors
    fig = recall_figure(metrics, colors)
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == sorted(colors)
    for ax in fig.axes:
        for line in ax.get_lines():
            assert line.get_color() == colors[line.get_label()]
        assert ax.get_ylim()[0] < 0  # a model at 0 (popularity) is drawn above the axis, not on it
        assert not ax.get_legend()


def test_training_curves_get_one_panel_per_model():
    histories = {"crossrec": {"loss": [7.0, 6.0], "val_recall_at_50": [0.2, 0.3]},
                 "target_only:books": {"loss": [3.0, 2.5]}, "id_two_tower": {"loss": [9.0, 8.0]}}
    fig = training_figure(histories, model_colors(["crossrec", "target_only", "id_two_tower"]))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["crossrec", "target_only:books", "id_two_tower"]


def test_missing_cells_are_blank_and_the_report_starts_with_a_summary(tmp_path):
    table = pd.DataFrame({"model": ["a"], "x": [np.nan], "y": [0.5]}).set_index("model")
    assert "nan" not in _markdown(table).lower()
    metrics = metrics_frame()
    paired = pd.DataFrame([{"model": "crossrec", "versus": "id_two_tower", "slice": "warm", "domain": "all",
                            "diff": 0.01, "diff_lo": 0.004, "diff_hi": 0.016, "relative": 0.2, "a_ahead": 0.99}])
    lines = summary_lines(metrics, paired)
    assert lines[0] == ("warm (500 queries): best crossrec 0.0600 [0.0550, 0.0650]; crossrec is ahead of "
                        "the best baseline, id_two_tower: +0.0100 [+0.0040, +0.0160]")
    report = write_report(metrics, tmp_path, title="t", paired=paired).read_text()
    assert report.index("## Summary") < report.index("## NDCG@10") and "nan" not in report.lower()


def test_with_the_served_list_measured_the_summary_and_the_first_paired_table_are_about_it(tmp_path):
    metrics = metrics_frame()
    served = metrics[metrics["model"] == "crossrec"].assign(model="served", **{"ndcg@10": 0.07})
    metrics = pd.concat([metrics, served[served["slice"] == "warm"]], ignore_index=True)
    cell = {"slice": "warm", "domain": "all", "relative": 0.2, "a_ahead": 0.5}
    paired = pd.DataFrame([
        {"model": "served", "versus": "id_two_tower", "diff": 0.02, "diff_lo": -0.001, "diff_hi": 0.04, **cell},
        {"model": "served", "versus": "crossrec", "diff": 0.01, "diff_lo": 0.002, "diff_hi": 0.02, **cell},
        {"model": "crossrec", "versus": "id_two_tower", "diff": 0.01, "diff_lo": 0.004, "diff_hi": 0.016, **cell}])
    lines = summary_lines(metrics, paired)
    # measured against the best baseline (never the towers), in its own paired row
    assert lines[0].endswith("served is not told apart from the best baseline, id_two_tower: +0.0200 "
                             "[-0.0010, +0.0400]")
    assert lines[1].startswith("zero_shot") and "crossrec is" not in lines[1]  # no paired row there
    report = write_report(metrics, tmp_path, title="t", paired=paired).read_text()
    served_at = report.index("## The served list (served) against each model")
    assert served_at < report.index("## crossrec's towers alone (crossrec) against each model")
    assert "+0.0100 [+0.0020, +0.0200]" in report[served_at:report.index("## crossrec's towers alone")]
