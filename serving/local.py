"""``CrossrecClient``'s calls answered in this process from an export folder: no server, the same
methods and answers (a notebook, a script, a test). Each model's newest complete set version is
loaded on first use, as ``crossrec serve`` loads it (TF Text and ScaNN ops registered, warm-up
requests replayed)::

    with LocalClient("saved_models") as model:
        model.recommend([("books", "BO00012")], domain="movies", k=10)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from crossrec.errors import ConfigError
from serving.client import CrossrecClient
from serving.model_set import latest_complete
from serving.models import LoadedModel, load_saved_model


class LocalClient(CrossrecClient):
    def __init__(self, model_dir: str | Path = "saved_models"):  # noqa: D107 (no channel: nothing to connect)
        self.base = Path(model_dir)
        if not self.base.is_dir():
            raise ConfigError(f"{self.base} is not a folder of exported models: run `crossrec export --out "
                              f"{self.base}` (or crossrec.api.export) first")
        self._loaded: dict[tuple[str, int], LoadedModel] = {}

    def close(self) -> None:
        self._loaded.clear()

    def model(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded ``name`` at ``version`` (default: its newest complete set version)."""
        if version is None:
            version = latest_complete(self.base / name) if (self.base / name).is_dir() else None
            if version is None:
                served = sorted(p.name for p in self.base.iterdir() if p.is_dir() and not p.name.startswith("."))
                raise ConfigError(f"{self.base} holds no complete version of model {name!r} (it holds: "
                                  f"{', '.join(served) or 'nothing'}); export it with `crossrec export`")
        key = (name, version)
        if key not in self._loaded:
            path = self.base / name / str(version)
            if not path.is_dir():
                raise ConfigError(f"{self.base} has no version {version} of model {name!r}")
            self._loaded[key] = load_saved_model(name, version, path)
        return self._loaded[key]

    def predict(self, model: str, inputs: dict[str, np.ndarray], *, version: int | None = None,
                signature: str = "serving_default") -> dict[str, np.ndarray]:
        loaded = self.model(model, version)
        if signature not in loaded.signatures:
            raise ConfigError(f"model {model!r} has no signature {signature!r} (it has: "
                              f"{', '.join(sorted(loaded.signatures))})")
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    def status(self, model: str) -> list[dict]:
        loaded = [v for (name, v) in self._loaded if name == model]
        return [{"version": v, "state": "AVAILABLE", "error": ""} for v in sorted(loaded)]
