"""TF Serving's REST JSON encoding, read strictly and written back.

Requests: ``instances`` (row format) or ``inputs`` (columnar); strings as JSON text or
``{"b64": ...}``. Every value must already have its input's type: ``"5"``, ``5.5`` or ``true`` for
an int32 ``k`` is an error naming the input, not a silent conversion; rows must be rectangular;
base64 must be valid. Responses: ``predictions`` / ``outputs``, bytes as text or ``{"b64": ...}``,
non-finite floats as strings (as TF Serving writes them).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import tensorflow as tf

from serving.errors import invalid


def json_value(value):
    if isinstance(value, np.ndarray):
        return [json_value(v) for v in value] if value.ndim else json_value(value.item())
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _leaf(value, dtype: tf.DType, name: str):
    if dtype == tf.string:
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800") is valid JSON, not text
                raise invalid(f"input {name!r}: text that is not valid Unicode (character {exc.start}: a lone "
                              "surrogate); send UTF-8 text or {\"b64\": ...}") from None
        if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid(f"input {name!r}: {value['b64'][:40]!r} is not valid base64") from None
        raise invalid(f"input {name!r}: expected text (or {{\"b64\": ...}}), got {_shown(value)}")
    if dtype == tf.bool:
        if isinstance(value, bool):
            return value
        raise invalid(f"input {name!r}: expected true or false, got {_shown(value)}")
    if dtype.is_integer:
        if isinstance(value, int) and not isinstance(value, bool):
            if not dtype.min <= value <= dtype.max:
                raise invalid(f"input {name!r}: {_shown(value)} is out of range for {dtype.name}")
            return value
        raise invalid(f"input {name!r}: expected an integer ({dtype.name}), got {_shown(value)}")
    if dtype.is_floating:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise invalid(f"input {name!r}: expected a number ({dtype.name}), got {_shown(value)}")
    raise invalid(f"input {name!r}: dtype {dtype.name} is not supported over REST")


def _shown(value) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def to_array(value, spec: tf.TensorSpec, name: str) -> np.ndarray:
    """A JSON value -> a numpy array of ``spec``'s dtype; rectangular or an error naming ``name``."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    flat: list = []

    def walk(v, depth):
        if depth == len(shape):
            if isinstance(v, list):
                raise invalid(f"input {name!r}: rows of different depths (a list where a value was expected)")
            flat.append(_leaf(v, spec.dtype, name))
            return
        if not isinstance(v, list) or len(v) != shape[depth]:
            raise invalid(f"input {name!r}: rows of different lengths (expected {shape[depth]} values at depth "
                          f"{depth})")
        for x in v:
            walk(x, depth + 1)

    walk(value, 0)
    dtype = object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
    array = np.empty(len(flat), dtype=dtype)
    array[:] = flat
    return array.reshape(shape)


def columns_of(body: dict, specs: dict) -> tuple[dict, bool]:
    """(input name -> JSON value, row format?) from a predict request body."""
    if ("instances" in body) == ("inputs" in body):
        raise invalid('the request body needs exactly one of "instances" (row format) or "inputs" (columnar)')
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid('"instances" must be a non-empty list')
        if len(specs) == 1 and not isinstance(instances[0], dict):
            return {next(iter(specs)): instances}, True
        if not all(isinstance(i, dict) for i in instances):
            raise invalid('"instances" must be objects naming each input, e.g. {"target_domain": "books", ...}')
        columns = {}
        for name in set().union(*instances):
            missing = [i for i, row in enumerate(instances) if name not in row]
            if missing:
                raise invalid(f"input {name!r} is missing from instance(s) {missing[:5]}")
            columns[name] = [row[name] for row in instances]
        return columns, True
    columns = body["inputs"]
    if isinstance(columns, dict):
        return columns, False
    if len(specs) == 1:
        return {next(iter(specs)): columns}, False
    raise invalid('"inputs" must be an object naming each input')
