"""Evaluation reports: Markdown table, JSON, CSV and PNG plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from crossrec.evaluation import SERVED, TOWERS

PAIRED_TITLES = {SERVED: f"The served list ({SERVED})", TOWERS: f"crossrec's towers alone ({TOWERS})"}
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


def reference_model(models) -> str:
    """The model a report measures the others against: the served list when it was measured (the
    product), else crossrec's towers."""
    return SERVED if SERVED in set(models) else TOWERS


def summary_lines(metrics: pd.DataFrame, paired: pd.DataFrame | None = None, digits: int = 4) -> list[str]:
    """Per slice (all domains together): the model with the best NDCG@10 and its interval, and how
    the served list (or, without it, crossrec's towers) compares with the best other model on the
    same queries (paired interval; a difference counts when its interval excludes 0)."""
    lines = []
    overall = metrics[(metrics["domain"] == "all") & metrics["ndcg@10"].notna()]
    ours = reference_model(overall["model"])
    for name, group in overall.groupby("slice", sort=True):
        best = group.sort_values("ndcg@10", ascending=False).iloc[0]
        text = f"{name} ({int(best['queries'])} queries): best {best['model']} {best['ndcg@10']:.{digits}f}"
        if pd.notna(best.get("ndcg@10_lo")):
            text += f" [{best['ndcg@10_lo']:.{digits}f}, {best['ndcg@10_hi']:.{digits}f}]"
        reference = ours if ours in set(group["model"]) else TOWERS
        others = group[~group["model"].isin({reference, SERVED, TOWERS})].sort_values("ndcg@10", ascending=False)
        if paired is not None and not paired.empty and reference in set(group["model"]) and len(others):
            rival = others.iloc[0]["model"]
            row = paired[(paired["model"] == reference) & (paired["versus"] == rival) & (paired["slice"] == name)
                         & (paired["domain"] == "all")]
            if len(row):
                r = row.iloc[0]
                verdict = ("ahead of" if r["diff_lo"] > 0 else "behind" if r["diff_hi"] < 0 else
                           "not told apart from")
                text += (f"; {reference} is {verdict} the best baseline, {rival}: {r['diff']:+.{digits}f} "
                         f"[{r['diff_lo']:+.{digits}f}, {r['diff_hi']:+.{digits}f}]")
        lines.append(text)
    return lines


def _markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    frame = frame.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    for _, row in frame.iterrows():
        cells = [("" if pd.isna(v) else f"{v:.{digits}f}") if isinstance(v, float) else str(v) for v in row]
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
    plots = _plots(metrics, histories or {}, out, reranking)
    parts = [f"# {title}", ""]
    parts += ["## Summary", "", *[f"- {line}" for line in summary_lines(metrics, paired)], ""]
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
        for reference, group in sorted(paired.groupby("model"), key=lambda kv: kv[0] != SERVED):
            what = PAIRED_TITLES.get(reference, reference)
            parts += [f"## {what} against each model on the same queries", "",
                      f"Difference in NDCG@10 ({reference} minus the model), its paired 95% bootstrap interval, the "
                      f"relative difference, and the share of 1,000 resamples in which {reference} is ahead. A win is "
                      "told from noise when the interval excludes 0.", "", _markdown(paired_table(group)), ""]
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


def model_colors(models) -> dict[str, str]:
    """One colour per model, the same in every plot of a report (sorted names -> tab10, tab20 past 10)."""
    import matplotlib

    names = sorted(set(models))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, name in enumerate(names)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recall_figure(metrics: pd.DataFrame, colors: dict[str, str]):
    """Recall@K per slice (domain "all"), one panel per slice, one legend for the figure; a curve
    at 0 stays visible above the axis."""
    plt = _pyplot()
    overall = metrics[metrics["domain"] == "all"]
    slices = sorted(overall["slice"].unique())
    recall_cols = sorted((c for c in overall.columns if re.fullmatch(r"recall@\d+", c)),
                         key=lambda c: int(c.split("@")[1]))
    if not slices or not recall_cols:
        return None
    ks = [int(c.split("@")[1]) for c in recall_cols]
    fig, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 3.6), squeeze=False)
    for ax, name in zip(axes[0], slices, strict=True):
        for model, group in overall[overall["slice"] == name].groupby("model"):
            values = group[recall_cols].to_numpy(dtype=float)[0]
            ax.plot(ks, values, marker="o", color=colors[model], label=model)
        top = max(ax.get_ylim()[1], 0.01)
        ax.set_ylim(-0.03 * top, top)
        ax.set_title(name)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K")
        ax.grid(alpha=0.3)
    _figure_legend(fig, colors, overall["model"].unique())
    return fig


def training_figure(histories: dict[str, dict], colors: dict[str, str]):
    """One panel per trained model: its training loss (solid, left axis) and validation Recall@50
    (dashed, right axis); losses of different models are on different scales."""
    plt = _pyplot()
    names = [n for n in histories if "loss" in histories[n]]
    if not names:
        return None
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        history = histories[name]
        color = colors.get(name.split(":")[0], colors.get(name, "C0"))
        epochs = range(1, len(history["loss"]) + 1)
        ax.plot(epochs, history["loss"], color=color)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        if "val_recall_at_50" in history:
            right = ax.twinx()
            right.plot(range(1, len(history["val_recall_at_50"]) + 1), history["val_recall_at_50"], color=color,
                       linestyle="--")
            right.set_ylabel("validation Recall@50 (dashed)", fontsize=8)
    fig.tight_layout()
    return fig


def _figure_legend(fig, colors: dict[str, str], models) -> None:
    from matplotlib.lines import Line2D

    shown = [m for m in colors if m in set(models)]
    handles = [Line2D([], [], color=colors[m], marker="o", label=m) for m in shown]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(shown), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.88))


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _plots(metrics: pd.DataFrame, histories: dict[str, dict], out: Path,
           reranking: pd.DataFrame | None = None) -> list[Path]:
    models = list(metrics["model"].unique()) + list(histories)
    if reranking is not None:
        models += list(reranking["model"].unique())
    colors = model_colors(m.split(":")[0] for m in models)
    paths = []
    figure = recall_figure(metrics, colors)
    if figure is not None:
        paths.append(_save(figure, out / "recall_at_k.png"))
    figure = training_figure(histories, colors)
    if figure is not None:
        paths.append(_save(figure, out / "training_curves.png"))
    if reranking is not None:
        paths.append(_save(reranking_figure(reranking, colors), out / "reranking.png"))
    return paths


def reranking_figure(reranking: pd.DataFrame, colors: dict[str, str]):
    overall = reranking[reranking["domain"] == "all"].pivot_table(index="slice", columns="model", values="ndcg@10")
    ax = overall.plot.bar(figsize=(6, 3.6), rot=0, color=[colors[m] for m in overall.columns], legend=False)
    ax.set_ylabel("NDCG@10 on the same candidates")
    ax.set_title("re-ranking")
    ax.grid(alpha=0.3, axis="y")
    _figure_legend(ax.figure, colors, overall.columns)
    return ax.figure
