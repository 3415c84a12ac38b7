"""Feed benchmark (issue 32): the ``recommender``'s ``feed`` over a grid of diversity and calibration.

    python -m bench.feed [--quick] [--config bench/configs/amazon_urllm_all_users.yaml] [--users 2000]

Trains the towers and the rankers (default: the built-in data), exports them, and asks the feed
signature, for each sampled test user, for 10 items from every domain, with the history before
the user's first test interaction. For every (diversity, calibration) of the grid:
- NDCG@10 against the user's test items in every domain (binary relevance);
- intra-list diversity: the mean pairwise distance (1 - cosine) of the listed items' text vectors;
- domain coverage: the share of the domains the list holds;
- calibration KL: KL(the history's domain shares || the list's, smoothed as the feed does).
Targets (issue 32) at the chosen setting, against the plain score order (both weights 0, the
domain-agnostic ranking of the same candidates by calibrated score): NDCG@10 >= 0.95x, KL
<= 0.5x, diversity >= 1.2x. The chosen setting is the grid point that meets the most targets
(then the highest NDCG@10). Writes ``feed_tradeoff.png`` beside the results.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common import RESULTS, Results, bench_parser
from bench.retrain import _config
from crossrec import schema
from crossrec.metrics import paired_mean_difference
from ranking.feed import ALPHA

DIVERSITY = (0.0, 0.1, 0.2, 0.3, 0.5)
CALIBRATION = (0.0, 0.25, 0.5, 1.0, 2.0)
N = 10


def user_requests(data, users: int, seed: int = 0):
    """(histories as (domain, item_id) lists, target row sets, history row arrays) of at most
    ``users`` test users: each user's shortest test history (before their first test item) and
    every test item of theirs after it."""
    by_user: dict = {}
    for query_set in data.test:
        ex = query_set.examples
        for i, user in enumerate(ex.user_id):
            history = ex.history[i][ex.history[i] > 0]
            known = by_user.setdefault(user, [history, set()])
            if len(history) < len(known[0]):
                known[0] = history
            known[1].add(int(ex.target[i]))
    names = sorted(u for u, (h, t) in by_user.items() if len(h) and t - set(h.tolist()))
    rng = np.random.default_rng(seed)
    names = sorted(rng.choice(names, min(users, len(names)), replace=False).tolist()) if names else []
    items = data.catalogue.items.set_index("row")
    histories = [[(items.loc[r, schema.DOMAIN], items.loc[r, schema.ITEM_ID]) for r in by_user[u][0]] for u in names]
    targets = [by_user[u][1] - set(by_user[u][0].tolist()) for u in names]
    return histories, targets, [by_user[u][0] for u in names]


def list_metrics(rows: np.ndarray, targets: set, history: np.ndarray, text: np.ndarray, item_domain: np.ndarray,
                 prior: np.ndarray) -> dict:
    """One feed's NDCG@10, intra-list diversity, domain coverage and calibration KL."""
    rows = rows[rows > 0]
    gains = np.array([1.0 if r in targets else 0.0 for r in rows])
    discounts = 1.0 / np.log2(np.arange(2, len(rows) + 2))
    ideal = discounts[:min(len(targets), len(rows))].sum() if len(rows) else 0.0
    unit = text[rows] / np.maximum(np.linalg.norm(text[rows], axis=1, keepdims=True), 1e-9)
    pairs = len(rows) * (len(rows) - 1)
    diversity = float((1.0 - unit @ unit.T).sum() / pairs) if pairs else 0.0
    d = len(prior)
    counts = np.bincount(item_domain[history], minlength=d)[:d] + prior
    p = counts / counts.sum()
    q = np.bincount(item_domain[rows], minlength=d)[:d] / max(len(rows), 1)
    q = (1 - ALPHA) * q + ALPHA * p
    return {"ndcg@10": float((gains * discounts).sum() / ideal) if ideal else 0.0, "diversity": diversity,
            "coverage": len(set(item_domain[rows].tolist())) / d, "kl": float(np.sum(p * np.log(p / q)))}


def ask_grid(feed, histories, points, batch: int = 64) -> dict:
    """(diversity, calibration) -> (users, N) item ids and domains, asked in batches."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    from serving.client import _history_inputs

    out = {}
    for diversity, calibration in tqdm(points, desc="asking the feed", unit="setting"):
        ids, domains = [], []
        for start in range(0, len(histories), batch):
            part = histories[start:start + batch]
            inputs = {k: tf.constant(v) for k, v in _history_inputs(part, [""] * len(part)).items()
                      if k != "target_domain"}
            b = len(part)
            answer = feed(**inputs, n=tf.fill([b], N), diversity=tf.fill([b], diversity),
                          calibration=tf.fill([b], calibration), target_shares=tf.zeros([b, 0]),
                          exclude_history=tf.fill([b], True))
            ids.append(answer["item_ids"].numpy())
            domains.append(answer["domains"].numpy())
        out[(diversity, calibration)] = (np.concatenate(ids), np.concatenate(domains))
    return out


def _plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for diversity in sorted({d for d, _ in table}):
        points = sorted((c, m) for (d, c), m in table.items() if d == diversity)
        axes[0].plot([m["kl"] for _, m in points], [m["ndcg@10"] for _, m in points], "o-",
                     label=f"diversity {diversity}")
        axes[1].plot([m["diversity"] for _, m in points], [m["ndcg@10"] for _, m in points], "o-",
                     label=f"diversity {diversity}")
    axes[0].set(xlabel="calibration KL (lower: closer to the history's domain shares)", ylabel="NDCG@10",
                title="along each line: calibration 0 -> 2")
    axes[1].set(xlabel="intra-list diversity (mean pairwise text distance)", ylabel="NDCG@10")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    from ranking.mining import text_vectors
    from ranking.train import train_ranking
    from serving.export import export_models
    from towers.train import train_retrieval

    parser = bench_parser(__doc__, "small built-in data, one epoch, a 2 x 2 grid (a smoke run)")
    parser.add_argument("--config", help="YAML config of the data and training (default: the built-in data)")
    parser.add_argument("--users", type=int, default=2000, help="test users asked (default 2000)")
    args = parser.parse_args(argv)
    config = _config(args)
    points = [(d, c) for d in ((0.0, 0.3) if args.quick else DIVERSITY) for c in ((0.0, 1.0) if args.quick
                                                                                  else CALIBRATION)]
    results = Results("feed")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        config = replace(config, encoder=replace(config.encoder, cache_dir=str(work / "text_cache")))
        run = train_retrieval(config, work / "towers", progress=False)
        train_ranking(config, run, work / "ranking", progress=False)
        export_models(work / "towers", work / "saved_models", ranking_dir=work / "ranking", progress=False)
        import tensorflow as tf

        feed = tf.saved_model.load(str(work / "saved_models" / "recommender" / "1")).signatures["feed"]
        histories, targets, history_rows = user_requests(run.data, args.users)
        catalogue = run.data.catalogue
        item_domain = catalogue.text_domain
        counts = np.bincount(item_domain[catalogue.rows(run.data.train[schema.DOMAIN], run.data.train[schema.ITEM_ID])],
                             minlength=len(catalogue.domain_names))[:len(catalogue.domain_names)]
        prior = counts / max(counts.sum(), 1)
        text = text_vectors(run.model)
        answers = ask_grid(feed, histories, points)
    table, users = {}, {}
    for point, (ids, domains) in answers.items():
        rows = np.stack([catalogue.rows([d.decode() for d in ds], [i.decode() for i in xs]) * (xs != b"")
                         for xs, ds in zip(ids, domains, strict=True)])
        per_user = [list_metrics(r, t, h, text, item_domain, prior)
                    for r, t, h in zip(rows, targets, history_rows, strict=True)]
        users[point] = {k: np.array([m[k] for m in per_user]) for k in per_user[0]}
        table[point] = {k: float(v.mean()) for k, v in users[point].items()}
        for metric, value in table[point].items():
            results.add(f"diversity {point[0]}, calibration {point[1]}: {metric}", value, "",
                        note=f"{len(per_user)} users, {N} items each" if metric == "ndcg@10" else "")
    plain = table[(0.0, 0.0)]
    ratios = {p: (m["ndcg@10"] / max(plain["ndcg@10"], 1e-9), m["kl"] / max(plain["kl"], 1e-9),
                  m["diversity"] / max(plain["diversity"], 1e-9)) for p, m in table.items()}
    met = {p: (r[0] >= 0.95) + (r[1] <= 0.5) + (r[2] >= 1.2) for p, r in ratios.items()}
    chosen = max(table, key=lambda p: (met[p], table[p]["ndcg@10"]))
    note = f"diversity {chosen[0]}, calibration {chosen[1]} (of the grid: the most targets met, then NDCG@10)"
    results.add("chosen setting: NDCG@10 / score order", ratios[chosen][0], "x", ">= 0.95", note=note)
    results.add("chosen setting: calibration KL / score order", ratios[chosen][1], "x", "<= 0.5")
    results.add("chosen setting: intra-list diversity / score order", ratios[chosen][2], "x", ">= 1.2")
    for metric in ("ndcg@10", "diversity"):  # paired over the same users: is the difference more than noise?
        paired = paired_mean_difference(users[chosen][metric], users[(0.0, 0.0)][metric])
        results.add(f"chosen setting - score order: {metric}", paired["diff"], "",
                    note=f"paired 95% interval over users [{paired['diff_lo']:+.4f}, {paired['diff_hi']:+.4f}]")
    directory = Path(args.results_dir or RESULTS)
    directory.mkdir(parents=True, exist_ok=True)
    _plot(table, directory / "feed_tradeoff.png")
    results.write(args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
