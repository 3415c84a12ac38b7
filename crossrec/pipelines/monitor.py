"""``crossrec monitor``: how far a new interactions table has drifted from the data the served
models were trained on, and whether that calls for a retrain (``crossrec retrain --when-drift``).

The served version's metadata holds its training data's profile (``crossrec.profile``); the new
table is profiled as the served model would meet it: with the training state beside the serving
folder (as ``crossrec export`` leaves it), each interaction's item is counted in the training data
(0 = an item the model never saw) and each user's history includes their training interactions;
without it, the new table is profiled alone and the share of unknown items is not measured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from crossrec.config import DataConfig
from crossrec.data.loaders import load_dataset
from crossrec.errors import ConfigError
from crossrec.pipelines.served_data import read_new_data
from crossrec.profile import DRIFT_THRESHOLD, drift, profile, unknown_share
from serving.layout import METADATA_FILE
from serving.model_set import latest_complete
from serving.training_state import locate

UNKNOWN_THRESHOLD = 0.1


@dataclass
class DriftReport:
    model_dir: str
    version: int
    psi: dict[str, float]
    unknown_item_share: float | None
    threshold: float = DRIFT_THRESHOLD
    unknown_threshold: float = UNKNOWN_THRESHOLD
    reference: dict = field(default_factory=dict)
    current: dict = field(default_factory=dict)

    @property
    def drifted(self) -> list[str]:
        """The parts past their threshold (empty: no drift)."""
        parts = [p for p, v in self.psi.items() if p != "text_share_change" and v > self.threshold]
        if self.unknown_item_share is not None and self.unknown_item_share > self.unknown_threshold:
            parts.append("unknown_items")
        return parts

    def lines(self) -> list[str]:
        def verdict(value: float) -> str:
            return "large" if value > self.threshold else "moderate" if value > 0.1 else "none"

        out = [f"drift of the new data against {self.model_dir} version {self.version}'s training data "
               f"(PSI: < 0.1 none, 0.1-{self.threshold} moderate, > {self.threshold} large)"]
        for part, value in self.psi.items():
            if part == "text_share_change":
                out.append(f"  items with text: {value:+.1%} of the catalogue")
            else:
                out.append(f"  {part:<16} PSI {value:.3f}  {verdict(value)}")
        if self.unknown_item_share is not None:
            out.append(f"  unknown items    {self.unknown_item_share:.1%} of the new interactions "
                       f"(threshold {self.unknown_threshold:.0%})")
        else:
            out.append("  unknown items    not measured: no training state beside the serving folder")
        out.append(f"drift: {', '.join(self.drifted)}" if self.drifted else "no drift above the thresholds")
        return out

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "drifted": self.drifted}, indent=2)


def served_reference(model_dir: str | Path) -> tuple[int, dict, Path | None]:
    """(version, reference profile, training data folder or None) of the newest complete set."""
    base = Path(model_dir)
    for name in ("recommender", "retrieval"):
        version = latest_complete(base / name) if (base / name).is_dir() else None
        if version is None:
            continue
        metadata = json.loads((base / name / str(version) / "assets" / METADATA_FILE).read_text())
        reference = metadata.get("reference_profile")
        if not reference:
            raise ConfigError(f"{base}/{name}/{version} records no training data profile (exported before "
                              "crossrec recorded one): export or retrain it again to monitor it")
        try:
            data = locate(base, version) / "towers" / "data"
        except ConfigError:
            data = None
        return version, reference, data if data is not None and data.is_dir() else None
    raise ConfigError(f"{base} holds no complete version of recommender or retrieval: run `crossrec export` first")


def drift_report(model_dir: str | Path, data: DataConfig, *, threshold: float = DRIFT_THRESHOLD,
                 unknown_threshold: float = UNKNOWN_THRESHOLD) -> DriftReport:
    version, reference, training_dir = served_reference(model_dir)
    if data.interactions is None:
        raise ConfigError("crossrec monitor needs the new data: --data PATH (a folder or an interactions file)")
    # a table needs no items file here (new interactions alone are what drifts); other formats load whole
    new = read_new_data(data.interactions, data.items) if data.format == "table" else load_dataset(data)
    training = catalogue = None
    if training_dir is not None:
        training = pd.read_parquet(training_dir / "interactions.parquet")
        catalogue = pd.read_parquet(training_dir / "items.parquet")
    items = new.items if new.items is not None and len(new.items) else None
    current = profile(new.interactions, items, training=training)
    unknown = None if catalogue is None else round(unknown_share(new.interactions, catalogue), 4)
    return DriftReport(str(model_dir), version, drift(reference, current), unknown, threshold, unknown_threshold,
                       reference, current)
