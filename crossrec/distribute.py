"""Chooses the tf.distribute strategy (and mixed precision) that training runs under."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from crossrec.config import TrainConfig
from crossrec.errors import ConfigError
from crossrec.quiet import spend_onednn_note


def resolve_kind(config: TrainConfig) -> str:
    if config.strategy != "auto":
        return config.strategy
    if os.environ.get("TF_CONFIG"):
        return "multi_worker"
    if config.tpu_address:
        return "tpu"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def strategy_from_config(config: TrainConfig) -> tf.distribute.Strategy:
    """auto: MultiWorkerMirrored when TF_CONFIG is set, TPU when train.tpu_address is set,
    Mirrored on several GPUs, else the default strategy (one CPU or GPU)."""
    kind = resolve_kind(config)
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("train.strategy multi_worker needs the TF_CONFIG environment variable, e.g. "
                              + json.dumps({"cluster": {"worker": ["host1:23456", "host2:23456"]},
                                            "task": {"type": "worker", "index": 0}}))
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        spend_onednn_note()  # after the strategy has set the collective ops (crossrec.quiet)
        return strategy
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"train.strategy: unknown strategy {kind!r}")


def _cluster_task(strategy: tf.distribute.Strategy):
    """The strategy's cluster resolver when this process is one task of a cluster, else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver if resolver is not None and resolver.task_type else None


def in_cluster(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process is one task of several (TF_CONFIG), not a single machine."""
    return _cluster_task(strategy) is not None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs: the chief task, or worker 0 of a cluster
    without one; always on one machine."""
    resolver = _cluster_task(strategy)
    if resolver is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and \
        "chief" not in resolver.cluster_spec().as_dict()


def task_name(strategy: tf.distribute.Strategy) -> str:
    """``worker-1`` etc. for a task of a cluster, ``""`` on one machine."""
    resolver = _cluster_task(strategy)
    return f"{resolver.task_type}-{resolver.task_id}" if resolver is not None else ""


def set_precision(config: TrainConfig) -> str:
    """mixed_float16 on GPU when train.mixed_precision; float32 otherwise (CPU gains nothing)."""
    policy = "mixed_float16" if config.mixed_precision and tf.config.list_logical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy
