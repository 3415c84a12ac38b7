"""Two training workers on loopback (MultiWorkerMirroredStrategy from TF_CONFIG), as a
Kubernetes job or a TPU-less cluster runs them: the same command in two processes."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import yaml

from crossrec.config import Config, DataConfig, EncoderConfig, SynthConfig, TowerConfig, TrainConfig
from crossrec.typed import to_dict


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_identical_weights_that_load_like_one(tiny_preset, tmp_path):
    from towers.queries import query_embeddings
    from towers.train import load_trained

    config = Config(data=DataConfig(synth=SynthConfig(n_users=60, n_items=90, n_interactions=1200, seed=5)),
                    encoder=EncoderConfig(preset=str(tiny_preset), sequence_length=16, cache_dir=str(tmp_path / "c")),
                    towers=TowerConfig(embedding_dim=8, history_length=6),
                    train=TrainConfig(epochs=1, batch_size=64, learning_rate=0.01, steps_per_execution=1))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    out = tmp_path / "run"  # one shared output folder, as on a shared volume: the chief writes it
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   CUDA_VISIBLE_DEVICES="")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "crossrec", "train", "retrieval", "--config", str(path), "--out", str(out),
             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for w in workers:
            logs.append(w.communicate(timeout=300)[0])
    finally:
        for w in workers:
            w.kill()
    for w, log in zip(workers, logs, strict=True):
        assert w.returncode == 0, log[-3000:]
    summaries = [json.loads((d / "run_summary.json").read_text()) for d in (out, out / "worker-1")]
    for s in summaries:
        assert s["distribution"]["strategy"] == "multi_worker"
        assert (s["distribution"]["workers"], s["distribution"]["replicas"]) == (2, 2)
        assert s["distribution"]["examples_read"] == s["examples"] // 2  # each worker its own half

    chief, catalogue, loaded_config = load_trained(out)
    other, _, _ = load_trained(out / "worker-1")
    weights = chief.get_weights()
    assert len(weights) == len(other.get_weights())
    for a, b in zip(weights, other.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The chief's result is an ordinary run: it loads and answers with one process.
    from crossrec.experiment import prepare_data

    data = prepare_data(loaded_config)
    queries = data.test[0].examples
    embeddings = query_embeddings(chief, queries)
    assert embeddings.shape == (len(queries), 8) and np.isfinite(embeddings).all()
    assert chief.all_item_embeddings().shape[0] == catalogue.size
