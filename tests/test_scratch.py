"""A killed process leaves nothing in TMPDIR: autograph's generated files live in the process's
own folder (crossrec.scratch), which the next start removes."""

import os
import signal
import subprocess
import sys

CONVERT_AND_WAIT = """
import crossrec, sys, time
import tensorflow as tf

@tf.function(autograph=True)
def f(x):
    if x > 0:  # autograph converts the Python if and writes the converted source to a file
        x = x - 1
    return x

f(tf.constant(1))
print("converted", flush=True)
time.sleep(60)
"""


def test_autograph_files_of_a_killed_process_are_removed_on_the_next_start(tmp_path):
    script = tmp_path / "convert.py"  # a file: autograph reads the function's source
    script.write_text(CONVERT_AND_WAIT)
    tmp_path = tmp_path / "tmp"
    tmp_path.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    killed = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == "converted"
        mine = tmp_path / f"crossrec-{killed.pid}"
        assert list(mine.glob("__autograph_generated_file*.py"))  # written in the process's own folder...
        assert not list(tmp_path.glob("__autograph_generated_file*"))  # ...never in TMPDIR itself
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert mine.exists()  # SIGKILL ran no clean-up
    subprocess.run([sys.executable, "-c", "import crossrec"], env=env, check=True)
    assert not mine.exists() and not list(tmp_path.rglob("__autograph_generated_file*"))
    assert list(tmp_path.iterdir()) == []  # the second process removed its own folder at exit


def test_a_running_processs_folder_is_left_alone(tmp_path):
    from crossrec.scratch import remove_stale

    alive = tmp_path / f"crossrec-{os.getppid()}"
    alive.mkdir()
    (tmp_path / "crossrec-notapid").mkdir()
    assert remove_stale(tmp_path) == [] and alive.exists() and (tmp_path / "crossrec-notapid").exists()
