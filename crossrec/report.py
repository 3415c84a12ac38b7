"""Evaluation reports: Markdown table, JSON, CSV and PNG plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

HEADLINE = ["recall@10", "recall@50", "recall@100", "ndcg@10", "mrr"]


def headline_table(metrics: pd.DataFrame, *, domain: str | None = None) -> pd.DataFrame:
    """Rows: slice (and domain); columns: model x metric. ``domain=None`` keeps every domain."""
    frame = metrics if domain is None else metrics[metrics["domain"] == domain]
    cols = [c for c in HEADLINE if c in frame.columns]
    table = frame.pivot_table(index=["slice", "domain"], columns="model", values=cols, sort=True)
    return table.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0)


def ndcg_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """NDCG@10 per (slice, domain) with one column per model: the headline comparison."""
    return metrics.pivot_table(index=["slice", "domain"], columns="model", values="ndcg@10", sort=True)


def interval_table(metrics: pd.DataFrame, metric: str = "ndcg@10", digits: int = 4) -> pd.DataFrame:
    """``metric`` per (slice, domain) and model as "value [lo, hi]" (the 95% bootstrap interval over
    queries) where the evaluator measured one, else the value alone."""
    frame = metrics.copy()
    lo, hi = f"{metric}_lo", f"{metric}_hi"

    def cell(row) -> str:
        value = row[metric]
        if pd.isna(value):
            return ""
        text = f"{value:.{digits}f}"
        if lo in row and pd.notna(row.get(lo)):
            text += f" [{row[lo]:.{digits}f}, {row[hi]:.{digits}f}]"
        return text

    frame["_cell"] = frame.apply(cell, axis=1)
    return frame.pivot_table(index=["slice", "domain"], columns="model", values="_cell", aggfunc="first",
                             sort=True).fillna("")


def paired_table(paired: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """One cell per (slice, domain) and compared model: "+0.0061 [-0.0012, +0.0135] +12% (94%)"."""
    frame = paired.copy()
    frame["_cell"] = [f"{r.diff:+.{digits}f} [{r.diff_lo:+.{digits}f}, {r.diff_hi:+.{digits}f}] "
                      f"{r.relative:+.0%} ({r.a_ahead:.0%})" if pd.notna(r.relative) else
                      f"{r.diff:+.{digits}f} [{r.diff_lo:+.{digits}f}, {r.diff_hi:+.{digits}f}]"
                      for r in frame.itertuples()]
    return frame.pivot_table(index=["slice", "domain"], columns="versus", values="_cell", aggfunc="first",
                             sort=True).fillna("")


def _markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    frame = frame.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    for _, row in frame.iterrows():
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(metrics: pd.DataFrame, out_dir: str | Path, *, title: str, notes: list[str] | None = None,
                 histories: dict[str, dict] | None = None, extra: dict | None = None,
                 reranking: pd.DataFrame | None = None, paired: pd.DataFrame | None = None,
                 ranks: pd.DataFrame | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(out / "metrics.csv", index=False)
    if ranks is not None and not ranks.empty:
        ranks.to_parquet(out / "ranks.parquet", index=False)  # every query's rank: for any paired analysis
    if paired is not None and not paired.empty:
        paired.to_csv(out / "paired.csv", index=False)
    payload = {"metrics": json.loads(metrics.to_json(orient="records")), "histories": histories or {}, **(extra or {})}
    if reranking is not None:
        reranking.to_csv(out / "reranking.csv", index=False)
        payload["reranking"] = json.loads(reranking.to_json(orient="records"))
    (out / "metrics.json").write_text(json.dumps(payload, indent=2))
    plots = _plots(metrics, histories or {}, out)
    if reranking is not None:
        plots.append(_reranking_plot(reranking, out))
    parts = [f"# {title}", ""]
    parts += [f"- {n}" for n in notes or []]
    parts += ["", "## NDCG@10 by slice and domain", "",
              "Each cell: the value and its 95% bootstrap interval over the cell's queries (1,000 resamples "
              "of the queries, the same resamples for every model).", "",
              _markdown(interval_table(metrics, "ndcg@10")), ""]
    for metric in ("recall@10", "recall@50", "mrr"):
        table = (interval_table(metrics, metric) if f"{metric}_lo" in metrics else
                 metrics.pivot_table(index=["slice", "domain"], columns="model", values=metric, sort=True))
        parts += [f"## {metric}", "", _markdown(table), ""]
    if paired is not None and not paired.empty:
        parts += ["## crossrec against each model on the same queries", "",
                  "Difference in NDCG@10 (crossrec minus the model), its paired 95% bootstrap interval, the "
                  "relative difference, and the share of 1,000 resamples in which crossrec is ahead. A win is "
                  "told from noise when the interval excludes 0.", "", _markdown(paired_table(paired)), ""]
    counts = metrics.drop_duplicates(["slice", "domain"]).set_index(["slice", "domain"])["queries"]
    parts += ["## Queries per slice and domain", "", _markdown(counts.to_frame()), ""]
    if reranking is not None:
        parts += ["## Re-ranking the retrieved candidates", "",
                  "The same merged lists (crossrec's towers' top-K and each candidate source's proposals) in "
                  "four orders: the towers' (retrieval), the ranker's, the distilled student's, and the served "
                  "order (the exported ranker's, new items at the towers' place: what `recommender` returns). "
                  "`in_list` is the share of targets the merged list holds (the ceiling of every order).", ""]
        for metric in ("ndcg@10", "recall@10", "mrr", "in_list", "rmse"):
            if metric in reranking and reranking[metric].notna().any():
                table = reranking.pivot_table(index=["slice", "domain"], columns="model", values=metric, sort=True)
                parts += [f"### {metric}", "", _markdown(table), ""]
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def _plots(metrics: pd.DataFrame, histories: dict[str, dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    overall = metrics[metrics["domain"] == "all"]
    slices = sorted(overall["slice"].unique())
    recall_cols = sorted((c for c in overall.columns if re.fullmatch(r"recall@\d+", c)),
                         key=lambda c: int(c.split("@")[1]))
    ks = [int(c.split("@")[1]) for c in recall_cols]
    if slices and recall_cols:
        fig, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 3.4), squeeze=False)
        for ax, name in zip(axes[0], slices, strict=True):
            for model, group in overall[overall["slice"] == name].groupby("model"):
                ax.plot(ks, group[recall_cols].to_numpy()[0], marker="o", label=model)
            ax.set_title(name)
            ax.set_xlabel("K")
            ax.set_ylabel("Recall@K")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "recall_at_k.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if histories:
        fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
        for name, history in histories.items():
            if "loss" in history:
                loss_ax.plot(range(1, len(history["loss"]) + 1), history["loss"], label=name)
            if "val_recall_at_50" in history:
                val_ax.plot(range(1, len(history["val_recall_at_50"]) + 1), history["val_recall_at_50"], label=name)
        loss_ax.set_title("training loss")
        val_ax.set_title("validation Recall@50")
        for ax in (loss_ax, val_ax):
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        val_ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "training_curves.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _reranking_plot(reranking: pd.DataFrame, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = reranking[reranking["domain"] == "all"].pivot_table(index="slice", columns="model", values="ndcg@10")
    ax = overall.plot.bar(figsize=(6, 3.4), rot=0)
    ax.set_ylabel("NDCG@10 on the same candidates")
    ax.set_title("re-ranking")
    ax.grid(alpha=0.3, axis="y")
    ax.figure.tight_layout()
    path = out / "reranking.png"
    ax.figure.savefig(path, dpi=110)
    plt.close(ax.figure)
    return path
