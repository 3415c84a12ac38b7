"""Runs a served model's signature on numpy inputs, checking names, dtypes and shapes first, and
turns every failure into a ``ServingError`` with TF Serving's status code and a message that names
the field. Shared by the gRPC and REST front ends."""

from __future__ import annotations

import time

import grpc
import numpy as np
import tensorflow as tf

from serving.batching import call_signature
from serving.errors import HTTP_STATUS, ServingError, invalid
from serving.limits import RequestLimits
from serving.models import LoadedModel, ModelManager

DEFAULT_SIGNATURE = "serving_default"
# Inputs a request may leave out, with the value each row then gets (as CrossrecClient sends it).
# A SavedModel signature cannot make an input optional, so stock TF Serving still needs them.
DEFAULT_INPUTS = {"exclude_history": True}
__all__ = ["DEFAULT_SIGNATURE", "HTTP_STATUS", "Predictor", "ServingError", "version_status"]


class Predictor:
    """Runs a signature of a served model on numpy inputs, checking them first."""

    def __init__(self, manager: ModelManager, limits: RequestLimits | None = None, metrics=None, batcher=None):
        self.manager = manager
        self.limits = limits or RequestLimits()
        self.metrics = metrics  # a serving.monitoring.ServingMetrics, or None
        self.batcher = batcher  # a serving.batching.Batcher (server-side batching), or None

    def signature_label(self, model: LoadedModel | None, signature_name: str) -> str:
        """A signature name safe as a metrics label: one the model has, else "<unknown>"."""
        name = signature_name or DEFAULT_SIGNATURE
        return name if model is not None and name in model.signatures else "<unknown>"

    def observe(self, api: str, name: str, model: LoadedModel | None, signature_name: str, code: str,
                seconds: float) -> None:
        if self.metrics is None:
            return
        known = name if name in self.manager.specs else "<unknown>"  # bounded label values only
        self.metrics.observe_request(api, known, None if model is None else model.version,
                                     self.signature_label(model, signature_name), code, seconds)

    def observe_stage(self, model: LoadedModel, stage: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_stage(model.name, stage, seconds)

    def model(self, name: str, version: int | None = None, label: str | None = None) -> LoadedModel:
        try:
            return self.manager.get(name, version, label)
        except KeyError as exc:
            raise ServingError(grpc.StatusCode.NOT_FOUND, exc.args[0]) from None

    def predict(self, model: LoadedModel, signature_name: str, inputs: dict, output_filter=()) -> dict:
        started = time.perf_counter()
        signature_name = signature_name or DEFAULT_SIGNATURE
        function = model.signatures.get(signature_name)
        if function is None:
            raise invalid(f'Serving signature key "{signature_name}" not found; the model has '
                          f"{sorted(model.signatures)}")
        specs = function.structured_input_signature[1]
        inputs = _with_defaults(inputs, specs)
        missing = sorted(set(specs) - set(inputs))
        extra = sorted(set(inputs) - set(specs))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unexpected input(s) {extra}")
            raise invalid(f"{'; '.join(parts)}; signature {signature_name!r} expects {sorted(specs)}")
        tensors = {}
        for name, spec in specs.items():
            value = inputs[name]
            dtype = value.dtype if isinstance(value, tf.Tensor) else None
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
            if dtype is None:
                dtype = tf.string if array.dtype.kind in "OSU" else tf.as_dtype(array.dtype)
            if dtype != spec.dtype:
                raise invalid(f"input {name!r}: expects dtype {spec.dtype.name}, got {dtype.name}")
            if not spec.shape.is_compatible_with(array.shape):
                raise invalid(f"input {name!r}: expects shape {spec.shape.as_list()} (None = any), got "
                              f"{list(array.shape)}")
            tensors[name] = array
        batch = {a.shape[0] for a in tensors.values() if a.ndim}
        if len(batch) > 1:
            raise invalid("inputs disagree on the batch size (first dimension): "
                          f"{ {k: a.shape[0] for k, a in tensors.items() if a.ndim} }")
        self.limits.check_request(model.name, tensors, model.metadata.get("max_k"))
        if output_filter:
            unknown = sorted(set(output_filter) - set(function.structured_outputs))
            if unknown:
                raise invalid(f"output_filter: unknown output(s) {unknown}; the signature has "
                              f"{sorted(function.structured_outputs)}")
        arrays = {name: np.asarray(array, dtype=object if specs[name].dtype == tf.string
                                   else specs[name].dtype.as_numpy_dtype) for name, array in tensors.items()}
        self.observe_stage(model, "check", time.perf_counter() - started)
        if self.batcher is not None:
            outputs = self.batcher.run(model, signature_name, function, arrays)
        else:
            if self.metrics is not None:
                self.metrics.observe_batch(model.name, signature_name, max(batch) if batch else 1)
            started = time.perf_counter()
            outputs = call_signature(function, arrays)
            self.observe_stage(model, "signature", time.perf_counter() - started)
        if self.metrics is not None:
            self.metrics.observe_answer(model, signature_name, arrays, outputs)
        return {k: v for k, v in outputs.items() if not output_filter or k in output_filter}


def _with_defaults(inputs: dict, specs: dict) -> dict:
    """``inputs`` with each left-out ``DEFAULT_INPUTS`` filled for every row (the rows counted on
    the first given input that has a batch dimension)."""
    absent = [name for name in DEFAULT_INPUTS if name in specs and name not in inputs]
    if not absent:
        return inputs
    rows = next((np.shape(v)[0] for name, v in inputs.items() if name in specs and np.ndim(v)), None)
    if rows is None:
        return inputs  # nothing to count the rows on: reported as missing
    return {**inputs, **{name: np.full(rows, DEFAULT_INPUTS[name], specs[name].dtype.as_numpy_dtype)
                         for name in absent}}


def version_status(manager: ModelManager, name: str, version: int | None, label: str | None = None):
    try:
        if label:
            version = manager.label_version(name, label)
        statuses = manager.status(name)
    except KeyError as exc:
        raise ServingError(grpc.StatusCode.NOT_FOUND, exc.args[0]) from None
    if version is not None:
        if version not in statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
        statuses = {version: statuses[version]}
    return statuses
