"""A small client for crossrec's models over TF Serving's gRPC API (the official stubs).

Works against the embedded server (``crossrec serve``) and a real ``tensorflow_model_server``::

    client = CrossrecClient("127.0.0.1:8500")
    client.recommend(history=[("books", "BO00012"), ("movies", "MO00041")], domain="movies", k=10)

A history is a list of ``(domain, item_id)`` pairs, oldest first. Each call returns plain Python
values: a list of ``{"item_id", "score", ...}`` dicts, best first; where the export explains its
answer (``because_*`` outputs), each dict also has ``"because": {"item_id", "domain", "weight"}``
(the history item that most drove it and its share; None where the history had no known item).
"""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from ranking.feed import FEED_DEFAULTS

History = list[tuple[str, str]]


class CrossrecClient:
    def __init__(self, target: str = "127.0.0.1:8500", *, timeout: float = 10.0,
                 root_certificates: bytes | None = None):
        if root_certificates is not None:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
        else:
            self.channel = grpc.insecure_channel(target)
        self.timeout = timeout
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CrossrecClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the models ------------------------------------------------------------------------------
    def recommend(self, history: History, domain: str, k: int = 10, *, exclude_history: bool = True,
                  model: str = "recommender", version: int | None = None) -> Recommendations:
        """Retrieve -> rank -> top k in one call (the ``recommender`` model)."""
        out = self.predict(model, {**_history_inputs([history], [domain]), "k": np.array([k], np.int32),
                                   "exclude_history": np.array([exclude_history])}, version=version)
        return _rows(out, 0, extra=("retrieval_scores",))

    def feed(self, history: History, n: int = 10, *, diversity: float = FEED_DEFAULTS["diversity"],
             calibration: float = FEED_DEFAULTS["calibration"],
             shares: dict[str, float] | None = None, domains: list[str] | None = None, exclude_history: bool = True,
             model: str = "recommender", version: int | None = None) -> Recommendations:
        """One list across every domain (the ``recommender``'s ``feed`` signature): ``diversity``
        in [0, 1], ``calibration`` in [0, 100] (defaults chosen by ``bench.feed``; 0 and 0 = the score order), ``shares`` the target share per domain (None: the
        history's; ``domains``: the model's domain order, from its metadata, needed with shares).
        Each row also has ``"domain"``."""
        target = np.zeros((1, 0), np.float32)
        if shares is not None:
            if domains is None:
                raise ValueError("feed(shares=...): pass domains=, the model's domains in order (its metadata)")
            target = np.array([[float(shares.get(d, 0.0)) for d in domains]], np.float32)
        out = self.predict(model, {**_history_inputs([history]), "n": np.array([n], np.int32),
                                   "diversity": np.array([diversity], np.float32),
                                   "calibration": np.array([calibration], np.float32), "target_shares": target,
                                   "exclude_history": np.array([exclude_history])}, version=version, signature="feed")
        rows = _rows(out, 0, extra=("retrieval_scores",))
        for row, domain in zip(rows, [d.decode() for d in out["domains"][0] if d], strict=True):
            row["domain"] = domain
        return rows

    def retrieve(self, history: History, domain: str, k: int = 10, *, exclude_history: bool = True,
                 model: str = "retrieval", version: int | None = None) -> Recommendations:
        """Top k by the towers alone (the ``retrieval`` model)."""
        out = self.predict(model, {**_history_inputs([history], [domain]), "k": np.array([k], np.int32),
                                   "exclude_history": np.array([exclude_history])}, version=version)
        return _rows(out, 0)

    def rank(self, history: History, domain: str, candidates: list[str], *, model: str = "ranking",
             version: int | None = None) -> list[dict]:
        """Scores of the given candidate item ids of ``domain``, in the order given."""
        inputs = {**_history_inputs([history], [domain]),
                  "candidate_item_ids": np.array([[c.encode() for c in candidates]], dtype=object)}
        out = self.predict(model, inputs, version=version)
        return [{"item_id": c, "engagement": float(out["engagement"][0, i]), "rating": float(out["rating"][0, i])}
                for i, c in enumerate(candidates)]

    def encode_items(self, texts: list[str], domains: list[str], *, model: str = "item_encoder",
                     version: int | None = None) -> np.ndarray:
        """Item text -> embedding, for indexing new items without retraining."""
        out = self.predict(model, {"text": np.array([t.encode() for t in texts], dtype=object),
                                   "domain": np.array([d.encode() for d in domains], dtype=object)},
                           version=version)
        return out["embedding"]

    # -- the protocol ------------------------------------------------------------------------------
    def predict(self, model: str, inputs: dict[str, np.ndarray], *, version: int | None = None,
                signature: str = "serving_default") -> dict[str, np.ndarray]:
        response = self.predictions.Predict(predict_request(model, inputs, version, signature), timeout=self.timeout)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def status(self, model: str) -> list[dict]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self.models.GetModelStatus(request, timeout=self.timeout)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [{"version": s.version, "state": states.Name(s.state), "error": s.status.error_message}
                for s in response.model_version_status]

    def metadata(self, model: str) -> get_model_metadata_pb2.SignatureDefMap:
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.metadata_field.append("signature_def")
        response = self.predictions.GetModelMetadata(request, timeout=self.timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return signatures


def _history_inputs(histories: list[History], domains: list[str] | None = None) -> dict[str, np.ndarray]:
    """The history inputs every signature takes, and ``target_domain`` when ``domains`` are given
    (a feed has none)."""
    width = max(1, max(len(h) for h in histories))
    ids = np.full((len(histories), width), b"", dtype=object)
    doms = np.full((len(histories), width), b"", dtype=object)
    for i, history in enumerate(histories):
        for j, (domain, item_id) in enumerate(history):
            doms[i, j], ids[i, j] = str(domain).encode(), str(item_id).encode()
    inputs = {"history_item_ids": ids, "history_domains": doms}
    if domains is not None:
        inputs["target_domain"] = np.array([d.encode() for d in domains], dtype=object)
    return inputs


class Recommendations(list):
    """The answer's rows (a list of dicts), and how much of the history the model used:
    ``history_known`` (items it knows; 0 = served like a brand-new user) and ``history_in_domain``
    (of those, in the target domain; 0 = a cross-domain cold start; None for a feed, which has
    no target domain)."""

    history_known: int | None = None
    history_in_domain: int | None = None


def _rows(out: dict[str, np.ndarray], i: int, extra=()) -> Recommendations:
    rows = Recommendations()
    if "history_known" in out:
        rows.history_known = int(out["history_known"][i])
    if "history_in_domain" in out:  # not in a feed's answer: it has no target domain
        rows.history_in_domain = int(out["history_in_domain"][i])
    for j, item in enumerate(out["item_ids"][i]):
        if not item:
            continue
        row = {"item_id": item.decode(), "score": float(out["scores"][i, j])}
        for name in extra:
            row[name.rstrip("s")] = float(out[name][i, j])
        if "because_item_ids" in out:
            because = out["because_item_ids"][i, j]
            row["because"] = {"item_id": because.decode(), "domain": out["because_domains"][i, j].decode(),
                              "weight": float(out["because_weights"][i, j])} if because else None
        rows.append(row)
    return rows


def tensor_proto(array) -> tensor_pb2.TensorProto:
    """A numpy array as a ``TensorProto``, written directly (strings as ``string_val``, numbers as
    ``tensor_content``): what ``tf.make_tensor_proto`` gives, about ten times faster."""
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto()
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist())
    elif array.dtype.kind in "biuf" and array.dtype.byteorder in "=|<":
        proto.dtype = tf.as_dtype(array.dtype).as_datatype_enum
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    else:
        return tf.make_tensor_proto(array)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape)
    return proto


def predict_request(model: str, inputs: dict, version: int | None = None, signature: str = ""):
    """A ``PredictRequest``: each input a numpy array (converted) or a ready ``TensorProto``."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto) else tensor_proto(value))
    return request
