"""crossrec sets the TF/Keras environment in one module, before TensorFlow is imported."""

import os
import subprocess
import sys

import pytest

CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND", "HF_HUB_OFFLINE")}


@pytest.mark.parametrize("package", ["towers", "serving", "ranking", "crossrec.cli", "bench.towers"])
def test_importing_an_entry_point_gives_keras2_as_tf_keras_and_keras3_as_keras(package):
    code = (f"import {package}\n"
            "import tensorflow as tf, keras, tf_keras\n"
            "assert tf.keras.__name__.startswith('tf_keras'), tf.keras.__name__\n"
            "assert tf_keras.__version__.startswith('2.'), tf_keras.__version__\n"
            "assert keras.__version__.startswith('3.'), keras.__version__\n"
            "assert keras.backend.backend() == 'tensorflow'\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], env=CLEAN_ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_importing_tensorflow_before_crossrec_is_refused_with_a_fix():
    code = "import tensorflow\nimport crossrec\n"
    result = subprocess.run([sys.executable, "-c", code], env=CLEAN_ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "Import crossrec (or towers / ranking / serving) before tensorflow" in result.stderr


def test_a_conflicting_value_is_refused():
    env = dict(CLEAN_ENV, TF_USE_LEGACY_KERAS="0")
    result = subprocess.run([sys.executable, "-c", "import crossrec"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "crossrec needs TF_USE_LEGACY_KERAS=1 but the environment has TF_USE_LEGACY_KERAS=0" in result.stderr


def test_the_benchmark_module_runs_in_a_fresh_interpreter():
    result = subprocess.run([sys.executable, "-m", "bench.towers", "--help"], env=CLEAN_ENV, capture_output=True,
                            text=True, timeout=300, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Towers benchmark" in result.stdout
