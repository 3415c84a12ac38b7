"""How long-running steps show progress: one rule for every Keras fit script. Each training is
one progress line that names the model ("training ranker (teacher)"), advances per epoch and
shows the last epoch's loss and validation metrics; on a terminal it redraws in place, in a log
file it is one line of carriage-return updates."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def _postfix(logs: dict | None) -> dict[str, str]:
    logs = logs or {}
    # the pooled validation metrics; the per-slice ones (val_recall_at_50_warm...) stay in the history
    shown = {k: v for k, v in logs.items() if k == "loss" or (k.startswith("val_") and k.count("_") <= 3)}
    return {k: f"{float(v):.4f}" for k, v in shown.items()}


def epoch_bar(name: str, epochs: int, base: type):
    """A callback drawing the training of ``name`` as one progress line; ``base`` is the Keras
    generation's ``Callback`` class (``keras.callbacks.Callback`` for the towers,
    ``tf.keras.callbacks.Callback`` for the ranker)."""

    class EpochBar(base):
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=epochs, desc=f"training {name}", unit="epoch", file=sys.stdout, leave=True,
                            dynamic_ncols=True)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.set_postfix(_postfix(logs), refresh=False)
            self.bar.update(1)

        def on_train_end(self, logs=None):
            if self.bar.n < self.bar.total:  # early stopping (or a resumed run) ended it sooner
                self.bar.set_description(f"training {name} (stopped after {self.bar.n} epochs)")
            self.bar.close()

    return EpochBar()
