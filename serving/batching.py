"""Server-side batching, configured as TF Serving's (``--enable_batching``,
``--batching_parameters_file``): concurrent Predict calls for the same model, version and
signature are merged into one signature call and the answer is split back by rows.

- A request waits in its queue until a batch thread takes it: a batch takes the queued requests
  in arrival order up to ``max_batch_size`` rows, after waiting at most ``batch_timeout_micros``
  from its first request for more (0: take what is queued now; under load, requests pile up while
  the previous batch runs, so batches grow exactly when they pay).
- Requests merge only when every input has the same shape beyond the batch dimension and they
  ask for the same largest ``k`` (so every output has the width the request alone would give);
  with ``pad_variable_length_inputs``, histories of different lengths merge too: the history
  inputs are padded with ``""``, which the signatures read as padding. A request's answer is the
  same with and without batching.
- ``allowed_batch_sizes`` pads a merged batch up to the next allowed size with copies of its last
  row (their answers are dropped); ``max_enqueued_batches`` bounds the rows waiting per queue (more
  is UNAVAILABLE, "retry", as TF Serving answers); ``num_batch_threads`` batches run at once.
- A merged call that a request's values make fail (e.g. an unknown domain) is retried request by
  request, so only the request at fault gets the error.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf

from crossrec.errors import ConfigError
from serving.errors import ServingError, invalid, op_error_message
from serving.protos import BatchingParameters, parse_text_file

PADDED_INPUTS = ("history_item_ids", "history_domains")  # "" is their padding value


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's ``BatchingParameters`` (and its defaults)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_file(cls, path: str | Path | None) -> BatchingOptions:
        flag = "--batching_parameters_file"
        if not path:
            return cls()
        proto = parse_text_file(path, BatchingParameters, flag)
        values = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            if proto.HasField(name):
                values[name] = int(getattr(proto, name).value)
        options = cls(**values, allowed_batch_sizes=tuple(int(s) for s in proto.allowed_batch_sizes),
                      pad_variable_length_inputs=bool(proto.pad_variable_length_inputs))
        options.check(f"{flag} {path}")
        return options

    def check(self, where: str) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: {name} must be at least 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ConfigError(f"{where}: batch_timeout_micros must not be negative")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[0] < 1 or sizes[-1] != self.max_batch_size):
            raise ConfigError(f"{where}: allowed_batch_sizes must increase and end with max_batch_size "
                              f"({self.max_batch_size}), got {list(sizes)}")


@dataclass
class _Task:
    arrays: dict[str, np.ndarray]
    rows: int
    call: tuple  # (model, signature name, function): the same for every task of one queue
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: Exception | None = None


def _merge_key(arrays: dict[str, np.ndarray], pad: bool) -> tuple:
    """What requests must share to merge: shapes beyond the batch dimension (but the padded
    history width), scalar inputs' values, and the largest k (it sets the outputs' width)."""
    shapes = tuple(sorted((name, a.shape[1:]) for name, a in arrays.items() if not (pad and name in PADDED_INPUTS)))
    scalars = tuple(sorted((name, a.tobytes()) for name, a in arrays.items() if not a.ndim))
    k = arrays.get("k")
    return shapes, scalars, int(k.max()) if k is not None and k.size else None


class Batcher:
    """Queues per (model, version, signature, merge key) and the threads that run their batches."""

    def __init__(self, options: BatchingOptions, on_batch=None, on_stage=None):
        self.options = options
        self.on_batch = on_batch  # on_batch(model_name, signature_name, rows): for metrics
        # on_stage(model_name, stage, seconds): per request, its "queue" wait and its batch's
        # "merge", "signature" and "split" (which each of the batch's requests waited through)
        self.on_stage = on_stage
        self._queues: dict[tuple, deque[_Task]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, model, signature_name: str, function, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The signature's outputs for this request's rows, computed in a merged batch."""
        rows = next((a.shape[0] for a in arrays.values() if a.ndim), 1)
        if rows > self.options.max_batch_size:
            raise invalid(f"batch of {rows} rows exceeds the server's batching max_batch_size of "
                          f"{self.options.max_batch_size} (--batching_parameters_file); split the request")
        key = (model.name, model.version, signature_name, _merge_key(arrays, self.options.pad_variable_length_inputs))
        task = _Task(arrays, rows, (model, signature_name, function))
        with self._cond:
            if self._stopping:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            queue = self._queues.setdefault(key, deque())
            waiting = sum(t.rows for t in queue)
            if waiting + rows > self.options.max_enqueued_batches * self.options.max_batch_size:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the batch queue is full; retry")
            queue.append(task)
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- the batch threads -----------------------------------------------------------------------
    def _take(self) -> tuple[tuple, list[_Task]] | None:
        """The next batch: from the queue whose first request has waited longest."""
        timeout = self.options.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if self._stopping:
                    return None
                ready = [(q[0].enqueued, key) for key, q in self._queues.items() if q]
                if not ready:
                    self._cond.wait()
                    continue
                first, key = min(ready)
                queue = self._queues[key]
                remaining = first + timeout - time.monotonic()
                if remaining > 0 and sum(t.rows for t in queue) < self.options.max_batch_size:
                    self._cond.wait(remaining)  # more may come; then look again
                    continue
                batch, rows = [], 0
                while queue and (not batch or rows + queue[0].rows <= self.options.max_batch_size):
                    task = queue.popleft()
                    batch.append(task)
                    rows += task.rows
                if not queue:
                    del self._queues[key]
                return key, batch

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            _, batch = taken
            model, signature_name, function = batch[0].call  # held by the tasks only: an unloaded
            # version is freed once its last request is answered
            self._stage(model, "queue", *(time.monotonic() - t.enqueued for t in batch))
            try:
                self._run_batch(model, signature_name, function, batch)
            except Exception as exc:  # never lose a waiting request
                for task in batch:
                    if not task.done.is_set():
                        task.error = exc
                        task.done.set()

    def _stage(self, model, stage: str, *seconds: float) -> None:
        if self.on_stage is not None:
            for value in seconds:
                self.on_stage(model.name, stage, value)

    def _run_batch(self, model, signature_name, function, batch: list[_Task]) -> None:
        rows = [t.rows for t in batch]
        started = time.perf_counter()
        merged = _concatenate([t.arrays for t in batch], self.options.pad_variable_length_inputs)
        total = sum(rows)
        size = next((s for s in self.options.allowed_batch_sizes if s >= total), total)
        if size > total:  # pad up with copies of the last row
            merged = {k: np.concatenate([a, np.repeat(a[-1:], size - total, axis=0)]) if a.ndim else a
                      for k, a in merged.items()}
        if self.on_batch is not None:
            self.on_batch(model.name, signature_name, size)
        merging = time.perf_counter()
        self._stage(model, "merge", *[merging - started] * len(batch))
        try:
            outputs = call_signature(function, merged)
        except ServingError:
            if len(batch) == 1:
                raise
            for task in batch:  # a value of one request failed the merged call: only it gets the error
                try:
                    task.result = call_signature(function, task.arrays)
                except ServingError as error:
                    task.error = error
                task.done.set()
            return
        splitting = time.perf_counter()
        self._stage(model, "signature", *[splitting - merging] * len(batch))
        start = 0
        for task in batch:
            task.result = {k: v[start:start + task.rows] for k, v in outputs.items()}
            start += task.rows
        self._stage(model, "split", *[time.perf_counter() - splitting] * len(batch))
        for task in batch:
            task.done.set()


def call_signature(function, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A signature on numpy inputs -> numpy outputs; its errors as ``ServingError``s."""
    try:
        outputs = function(**{k: tf.constant(v) for k, v in arrays.items()})
    except tf.errors.InvalidArgumentError as exc:
        raise invalid(op_error_message(exc)) from None
    except tf.errors.OpError as exc:
        raise ServingError(grpc.StatusCode.INTERNAL, op_error_message(exc)) from None
    return {k: v.numpy() for k, v in outputs.items()}


def _concatenate(parts: list[dict[str, np.ndarray]], pad: bool) -> dict[str, np.ndarray]:
    merged = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if pad and name in PADDED_INPUTS and len({a.shape[1] for a in arrays}) > 1:
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, [(0, 0), (width - a.shape[1], 0)], constant_values=b"") for a in arrays]
        merged[name] = np.concatenate(arrays) if arrays[0].ndim else arrays[0]
    return merged
