"""Served models run by TensorFlow alone, as stock tensorflow/serving runs them: a fresh Python
process that imports no crossrec, scann, tensorflow_text, keras-hub or TFRS."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
job = json.load(sys.stdin)
outputs = {}
for name, inputs in job["requests"].items():
    signature = tf.saved_model.load(job["base"] + "/" + name + "/" + str(job["version"])).signatures["serving_default"]
    result = signature(**{key: tf.constant(value) for key, value in inputs.items()})
    outputs[name] = {key: (np.char.decode(v.numpy().astype(bytes)) if v.dtype == tf.string else v.numpy()).tolist()
                     for key, v in result.items()}
loaded = [m for m in ("crossrec", "scann", "tensorflow_text", "keras_hub", "tensorflow_recommenders") if m in sys.modules]
print(json.dumps({"outputs": outputs, "loaded": loaded}))
"""


def stock_answers(base: Path, version: int, requests: dict[str, dict]) -> dict:
    """``{"outputs": {model: {output: nested lists}}, "loaded": [...]}``: each model's
    ``serving_default`` at ``version`` asked with its inputs (nested lists; strings as str), and
    which of the packages above the process loaded (none, for a model stock TF Serving can serve)."""
    job = json.dumps({"base": str(base), "version": version, "requests": requests})
    done = subprocess.run([sys.executable, "-c", SCRIPT], input=job, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def as_lists(inputs: dict) -> dict:
    """Client inputs (numpy arrays, strings as bytes) as JSON-ready nested lists."""
    return {key: (np.char.decode(value.astype(bytes)) if value.dtype == object else value).tolist()
            for key, value in inputs.items()}
