"""What one request may ask for, checked before any work its size drives.

TF Serving bounds a request by its gRPC message size and, with batching on, by
``max_batch_size`` (``--batching_parameters_file``); crossrec's server adds the rest, because a
small request can still ask for a lot: a shape of 10⁹ strings all filled from one value, a text of
megabytes for the tokenizer, or k = 2³¹−1. Every limit here is checked on the request's declared
shapes and values before a tensor is built or a graph runs; the signatures themselves also clip
``k`` to ``max_k`` (fixed at export), so stock TF Serving never allocates for an absurd k either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.errors import invalid

DEFAULT_MAX_BATCH_SIZE = 1024
DEFAULT_MAX_ELEMENTS = 1_000_000
DEFAULT_MAX_STRING_BYTES = 64 * 1024


@dataclass(frozen=True)
class RequestLimits:
    # Rows (queries, texts) per request, for every model unless ``per_model`` names it.
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    per_model: dict[str, int] = field(default_factory=dict)
    # Values over all inputs of one request (e.g. rows x history width).
    max_elements: int = DEFAULT_MAX_ELEMENTS
    # Bytes of one string value (an item id, a domain, an item's text).
    max_string_bytes: int = DEFAULT_MAX_STRING_BYTES

    def batch_limit(self, model: str) -> int:
        return self.per_model.get(model, self.max_batch_size)

    def check_shape(self, name: str, dims: list[int]) -> None:
        """An input's declared shape, before its values are read."""
        if any(d < 0 for d in dims):
            raise invalid(f"input {name!r}: shape {dims} has a negative dimension")
        if int(np.prod(dims, dtype=object)) > self.max_elements:
            raise invalid(f"input {name!r}: shape {dims} holds more than the {self.max_elements} values a request "
                          "may carry (--max_request_elements)")

    def check_request(self, model: str, arrays: dict[str, np.ndarray], max_k: int | None) -> None:
        """Every input's values: the batch, the total size, string lengths and k."""
        total = sum(int(a.size) for a in arrays.values())
        if total > self.max_elements:
            raise invalid(f"the request carries {total} values; the limit is {self.max_elements} "
                          "(--max_request_elements)")
        limit = self.batch_limit(model)
        for name, array in arrays.items():
            if array.ndim and array.shape[0] == 0:
                raise invalid(f"input {name!r}: the batch is empty; send at least one row")
            if array.ndim and array.shape[0] > limit:
                raise invalid(f"input {name!r}: batch of {array.shape[0]} rows exceeds the limit of {limit} for "
                              f"model {model!r} (--max_batch_size); split the request")
            if array.dtype.kind in "OSU" and array.size:
                longest = max(len(v) for v in array.reshape(-1))
                if longest > self.max_string_bytes:
                    raise invalid(f"input {name!r}: a value of {longest} bytes exceeds the limit of "
                                  f"{self.max_string_bytes} (--max_string_bytes)")
        k = arrays.get("k")
        if k is not None and k.size and max_k is not None:
            low, high = int(k.min()), int(k.max())
            if low < 1:
                raise invalid(f"k: must be at least 1, got {low}")
            if high > max_k:
                raise invalid(f"k: must be at most {max_k} (max_k fixed at export), got {high}")
