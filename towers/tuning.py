"""Settings chosen on the user's own validation data: a tower setting given as ``auto``.

Some settings reverse between data sets (``towers.item_id_dropout``: 0.3 gave new items +19% and
+51% on Amazon Arts/Office, where items have about 6 training interactions each, and cost them
7-23% on MovieLens and the built-in data, where they have dozens). With ``auto`` the towers are
trained once per candidate value on the training split, each scored by the validation queries'
full-corpus Recall@50 averaged over the validation slices (warm, cross-domain cold start, new
items: each slice weighs the same, since the setting trades one slice against another and pooled
queries are mostly warm; no test query is looked at). The first value (the default) is kept unless
another scores more than ``towers.auto_margin`` above it, and the value kept trains the final
towers. An Optuna study
runs the search: the values measured to matter are tried first, then its TPE sampler proposes
more while ``towers.auto_budget_minutes`` lasts. The choice and every trial's score go into the
run's summary, its saved config holds the value chosen (so ``crossrec retrain`` keeps it), and
the export's metadata records it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

from crossrec.config import Config
from crossrec.errors import ConfigError

AUTO = "auto"
# setting -> (the values tried first, the range the sampler may propose beyond them)
SEARCH = {"item_id_dropout": ((0.1, 0.3), (0.0, 0.6))}  # the default first


@dataclass
class AutoChoice:
    settings: dict[str, float]
    metric: str
    trials: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"settings": self.settings, "metric": self.metric, "trials": self.trials,
                "seconds": round(self.seconds, 1)}


def slice_balanced(history: dict) -> float:
    """At the epoch early stopping kept (the best pooled validation Recall@50), the mean of the
    slices' validation Recall@50; the pooled value where the run has no per-slice ones."""
    from towers.train import MONITOR

    pooled = history.get(MONITOR) or []
    if not pooled:
        return float("nan")
    best = int(max(range(len(pooled)), key=pooled.__getitem__))
    slices = [values[best] for key, values in history.items() if key.startswith(f"{MONITOR}_")]
    return float(sum(slices) / len(slices)) if slices else float(pooled[best])


def _within_noise(study, margin: float) -> dict[str, float]:
    """The first trial's values (the default's, tried first) unless another trial scored more than
    ``margin`` (relative) above it: one training per candidate moves by a few percent with the seed
    alone, and a gain inside that is not a gain."""
    done = [t for t in study.trials if t.value is not None]
    first, best = done[0], max(done, key=lambda t: t.value)
    chosen = best if best.value > first.value * (1 + margin) else first
    return {n: round(float(v), 4) for n, v in chosen.params.items()}


def auto_settings(config: Config) -> list[str]:
    """The tower settings ``config`` leaves to ``auto``."""
    return [name for name in SEARCH if getattr(config.towers, name) == AUTO]


def choose(config: Config, data, train, *, progress: bool = True) -> tuple[Config, AutoChoice | None]:
    """``config`` with each ``auto`` setting replaced by the value its validation queries prefer;
    ``train(config)`` trains towers without saving and returns their fit history."""
    names = auto_settings(config)
    if not names:
        return config, None
    if not config.towers.use_text:  # ID-only towers: item-ID dropout does not apply
        return replace(config, towers=replace(config.towers, **{n: 0.0 for n in names})), None
    if os.environ.get("TF_CONFIG"):
        raise ConfigError(f"towers.{names[0]}: auto trains the towers once per candidate, on one machine; "
                          "give a value (e.g. 0.1) for training on several workers")
    import optuna

    from towers.train import MONITOR

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    budget = 60 * config.towers.auto_budget_minutes
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.train.seed))
    for values in zip(*(SEARCH[n][0] for n in names), strict=True):
        study.enqueue_trial(dict(zip(names, values, strict=True)))
    first = len(SEARCH[names[0]][0])

    def objective(trial) -> float:
        settings = {n: trial.suggest_float(n, *SEARCH[n][1]) for n in names}
        history = train(replace(config, towers=replace(config.towers, **settings)))
        score = slice_balanced(history)
        if progress:
            print(f"auto: {', '.join(f'{k} {v:.3g}' for k, v in settings.items())} -> validation "
                  f"{MONITOR}, mean over slices, {score:.4f}", flush=True)
        return score

    def within_budget(study, trial) -> None:
        if trial.number + 1 >= first and time.perf_counter() - started > budget:
            study.stop()  # the values tried first always run; more only while the budget lasts

    study.optimize(objective, n_trials=config.towers.auto_trials, callbacks=[within_budget])
    best = _within_noise(study, config.towers.auto_margin)
    trials = [{**{n: round(float(v), 4) for n, v in t.params.items()}, "score": t.value} for t in study.trials
              if t.value is not None]
    choice = AutoChoice(best, f"{MONITOR}, the mean over slices", trials, time.perf_counter() - started)
    if progress:
        print(f"auto: chose {', '.join(f'{k} {v}' for k, v in best.items())} ({len(trials)} trials, "
              f"{choice.seconds:.0f} s)", flush=True)
    return replace(config, towers=replace(config.towers, **best)), choice
