"""Warm start: a trained model's weights copied into one built for a changed catalogue.

Retraining builds fresh towers for the new catalogue (its items and domains may have moved,
arrived or gone) and copies the served model's weights in, matched by name:

- weights that do not depend on the catalogue (the adapters' dense layers, the user tower's
  attention and MLP, a fine-tuned backbone) are copied as they are;
- item-indexed weights (the item-ID embedding) are remapped by item key (domain, item_id): an
  item keeps its vector wherever its row now is. An item that had no ID vector in the served
  model (new, or without training interactions until now) starts from zero, so its embedding
  starts where serving had it, from its text alone;
- domain-indexed weights (the per-domain adapters, the user tower's history- and target-domain
  embeddings) are remapped by domain name. A newly trained domain starts from the zero-shot path:
  a zero adapter and the unseen-domain target embedding, which training then specialises;
- each known domain keeps its text centre (the mean text vector it was trained with), so with a
  frozen encoder an unchanged item's embedding is exactly the served one until training moves it.

A weight whose shape changed for another reason (a different ``embedding_dim``...) keeps its
fresh initial value and is listed in the report. Rankers are warm-started by
``ranking.warm_start``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crossrec.features import Catalogue

ITEM_ROWS = ("item_tower/item_id_embedding/embeddings",)
DOMAIN_AXIS = {  # weight -> the axis that is indexed by domain
    "item_tower/domain_adapters/kernel": 1,
    "user_tower/history_domain/embeddings": 0,
    "user_tower/target_domain/embeddings": 0,
}


@dataclass
class WarmStartReport:
    copied: list[str] = field(default_factory=list)
    remapped: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # shape changed: left at the initial value
    items_carried: int = 0  # items of the new catalogue that were in the old one
    domains_carried: int = 0

    def as_dict(self) -> dict:
        return {"copied": len(self.copied), "remapped": self.remapped, "fresh": self.fresh,
                "items_carried": self.items_carried, "domains_carried": self.domains_carried}


def _key(variable, model_name: str) -> str:
    path = variable.path
    return path.split("/", 1)[1] if path.startswith(model_name + "/") else path


def tower_weights(model) -> dict[str, object]:
    """The trainable state of a ``RetrievalModel`` (its towers) by name."""
    variables = model.item_tower.weights + model.user_tower.weights
    return {_key(v, model.name): v for v in variables}


def item_row_map(old: Catalogue, new: Catalogue) -> np.ndarray:
    """(new.size,) the old row of each new row (0 = the item is new)."""
    items = new.items
    mapping = np.zeros(new.size, np.int64)
    mapping[items["row"].to_numpy()] = old.rows(items["domain"], items["item_id"])
    return mapping


def domain_map(old: Catalogue, new: Catalogue) -> np.ndarray:
    """(len(new.domains),) the old index of each new domain index (-1 = newly trained; 0 -> 0)."""
    return np.array([0] + [old.domains.index(d) if d in old.domains else -1 for d in new.domains[1:]])


def _remap_domains(old_value: np.ndarray, new_value: np.ndarray, mapping: np.ndarray, axis: int, key: str):
    old_value, out = np.moveaxis(old_value, axis, 0), np.moveaxis(new_value.copy(), axis, 0)
    for new_index, old_index in enumerate(mapping):
        if old_index >= 0:
            out[new_index] = old_value[old_index]
        elif key.endswith("target_domain/embeddings"):
            out[new_index] = old_value[0]  # the unseen-domain query: what zero-shot requests used
        elif key.endswith("history_domain/embeddings"):
            out[new_index] = old_value[1:].mean(axis=0) if len(old_value) > 1 else old_value[0]
        else:
            out[new_index] = 0  # adapters: none yet, the domain-agnostic path alone
    return np.moveaxis(out, 0, axis)


def warm_start_towers(new_model, old_model, old_catalogue: Catalogue, new_catalogue: Catalogue) -> WarmStartReport:
    """Copies ``old_model``'s tower weights into ``new_model`` (both built), remapping items and domains."""
    report = WarmStartReport()
    old = tower_weights(old_model)
    rows = item_row_map(old_catalogue, new_catalogue)
    domains = domain_map(old_catalogue, new_catalogue)
    report.items_carried = int((rows[1:] > 0).sum())
    report.domains_carried = int((domains[1:] >= 0).sum())
    if getattr(new_model, "text_table", None) is not None and getattr(old_model, "text_table", None) is not None:
        old_means, means = np.asarray(old_model.text_means), np.asarray(new_model.text_means).copy()
        for i, name in enumerate(new_catalogue.domain_names):
            if name in old_catalogue.domain_names:
                means[i] = old_means[old_catalogue.domain_names.index(name)]
        new_model.text_means.assign(means)
    for key, variable in tower_weights(new_model).items():
        source = old.get(key)
        if source is None:
            report.fresh.append(key)
            continue
        value, current = np.asarray(source), np.asarray(variable)
        if key in ITEM_ROWS and value.shape[1:] == current.shape[1:]:
            old_known = np.asarray(old_model.id_known)
            known = (rows > 0) & old_known[rows]
            current = np.zeros_like(current)
            current[known] = value[rows[known]]
            variable.assign(current)
            report.remapped.append(key)
        elif key in DOMAIN_AXIS and _same_except(value.shape, current.shape, DOMAIN_AXIS[key]):
            variable.assign(_remap_domains(value, current, domains, DOMAIN_AXIS[key], key))
            report.remapped.append(key)
        elif value.shape == current.shape:
            variable.assign(value)
            report.copied.append(key)
        else:
            report.fresh.append(key)
    return report


def _same_except(a, b, axis: int) -> bool:
    return len(a) == len(b) and all(x == y for i, (x, y) in enumerate(zip(a, b, strict=True)) if i != axis)
