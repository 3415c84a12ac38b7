"""Warm start of a ranker: the served ranker's weights copied into a fresh one of the same shape.
Copied only when the domain vocabulary is unchanged (the domain one-hot feeds the first layer);
otherwise the ranker trains cold."""

from __future__ import annotations

from towers.warm_start import WarmStartReport


def warm_start_ranker(new_model, old_model) -> WarmStartReport:
    """Copies a ranker's trainable weights into one of the same shape (same features, layers and
    domains); weights that differ in shape stay fresh."""
    report = WarmStartReport()
    old = old_model.trainable_weights
    new = new_model.trainable_weights
    if len(old) != len(new):
        report.fresh = [w.name for w in new]
        return report
    for target, source in zip(new, old, strict=True):
        if tuple(target.shape) == tuple(source.shape):
            target.assign(source)
            report.copied.append(target.name)
        else:
            report.fresh.append(target.name)
    return report
