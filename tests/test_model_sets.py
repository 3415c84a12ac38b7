"""Model sets: one version number for the models of one training, published together, resumed or
rolled back after a kill, and never served as a mix."""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from set_watch import SetWatcher, run_killed

from serving.layout import METADATA_FILE, versions
from serving.model_set import incomplete_sets, is_complete, latest_complete, publish_set
from serving.models import LoadedModel
from serving.training_state import state_root

MODELS = ["retrieval", "ranking", "recommender", "item_encoder"]


def fake_version(base: Path, model: str, version: int, set_id: str | None, models=MODELS) -> Path:
    """A version folder as the layout and the server see it (no real SavedModel inside), written
    aside and renamed into place as a publish does."""
    folder = base / model / str(version)
    aside = base / model / f".tmp-fake-{version}"
    (aside / "assets").mkdir(parents=True)
    (aside / "saved_model.pb").write_bytes(b"")
    metadata = {"model": model} if set_id is None else {"model": model, "set": {"version": version, "id": set_id,
                                                                               "models": list(models)}}
    (aside / "assets" / METADATA_FILE).write_text(json.dumps(metadata))
    aside.rename(folder)
    return folder


def fake_loader(slow: dict[str, float] | None = None):
    def load(name, version, path):
        time.sleep((slow or {}).get(name, 0.0))
        metadata = json.loads((path / "assets" / METADATA_FILE).read_text())
        return LoadedModel(name, version, path, None, {}, {}, metadata)
    return load


def test_a_version_serves_only_when_its_whole_set_is_on_disk(tmp_path):
    for model in MODELS:
        fake_version(tmp_path, model, 1, "a")
    fake_version(tmp_path, "retrieval", 2, "b")  # a publish killed after its first rename
    assert is_complete(tmp_path / "retrieval", 1) and not is_complete(tmp_path / "retrieval", 2)
    assert latest_complete(tmp_path / "retrieval") == 1
    assert [(s["version"], s["id"], s["present"]) for s in incomplete_sets(tmp_path)] == [(2, "b", ["retrieval"])]
    fake_version(tmp_path, "lonely", 5, None)  # no set (by hand, or an older crossrec): a set of its own
    assert is_complete(tmp_path / "lonely", 5)


def test_a_publish_resumes_its_own_interrupted_set_and_rolls_back_another(tmp_path):
    for model in MODELS:
        fake_version(tmp_path, model, 1, "a")
    fake_version(tmp_path, "retrieval", 2, "b")
    fake_version(tmp_path, "ranking", 2, "b")
    said = []
    with publish_set(tmp_path, MODELS, "b", say=said.append) as publish:  # the same set: finish it
        assert (publish.version, publish.missing, publish.resumed) == (2, ["recommender", "item_encoder"],
                                                                       ["retrieval", "ranking"])
        for model in publish.missing:
            (publish.folder(model) / "saved_model.pb").write_bytes(b"")
    assert all(versions(tmp_path / m) == [1, 2] for m in MODELS) and "resuming" in said[0]

    fake_version(tmp_path, "retrieval", 3, "c")  # another training's, killed half-way
    with publish_set(tmp_path, MODELS, "d", say=said.append) as publish:
        assert (publish.version, publish.missing) == (3, MODELS)
        assert versions(tmp_path / "retrieval") == [1, 2]  # rolled back before anything is written
        for model in MODELS:
            (publish.folder(model) / "saved_model.pb").write_bytes(b"")
    assert "rolled back" in said[-1] and all(versions(tmp_path / m) == [1, 2, 3] for m in MODELS)
    assert not list(tmp_path.glob("*/.tmp-*"))


def test_a_failed_publish_shows_nothing_and_an_older_incomplete_set_is_left_alone(tmp_path):
    for version in (1, 2):
        for model in MODELS:
            fake_version(tmp_path, model, version, f"s{version}")
    shutil.rmtree(tmp_path / "item_encoder" / "1")  # pruned by hand: not an interrupted publish
    with pytest.raises(RuntimeError), publish_set(tmp_path, MODELS, "e") as publish:
        (publish.folder("retrieval") / "saved_model.pb").write_bytes(b"")
        raise RuntimeError("the export failed")
    assert versions(tmp_path / "retrieval") == [1, 2] and not list(tmp_path.glob("*/.tmp-*"))
    with publish_set(tmp_path, ["retrieval"], "f") as publish:
        assert publish.version == 3
        (publish.folder("retrieval") / "saved_model.pb").write_bytes(b"")
    assert versions(tmp_path / "retrieval") == [1, 2, 3]


def test_publishes_into_one_folder_wait_for_each_other(tmp_path):
    order = []

    def publish(name):
        with publish_set(tmp_path, ["retrieval"], name) as p:
            order.append((name, "start", p.version))
            time.sleep(0.3)
            (p.folder("retrieval") / "saved_model.pb").write_bytes(b"")
            order.append((name, "end", p.version))

    threads = [threading.Thread(target=publish, args=(n,)) for n in ("x", "y")]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert [step for _, step, _ in order] == ["start", "end", "start", "end"]
    assert sorted(v for _, _, v in order) == [1, 1, 2, 2]


def test_the_server_switches_a_set_in_one_step_and_never_serves_an_incomplete_one(tmp_path):
    for model in MODELS:
        fake_version(tmp_path, model, 1, "a")
    with SetWatcher(tmp_path, MODELS, loader=fake_loader({"item_encoder": 0.4})) as watch:
        watch.wait_for(1)
        fake_version(tmp_path, "retrieval", 2, "b")
        fake_version(tmp_path, "ranking", 2, "b")
        time.sleep(0.6)
        assert watch.manager.served_versions() == {m: [1] for m in MODELS}  # incomplete: not loaded
        fake_version(tmp_path, "recommender", 2, "b")
        fake_version(tmp_path, "item_encoder", 2, "b")  # the slow one: the others wait for it
        watch.wait_for(2, timeout=10)
    assert watch.mixes == [] and watch.seen == [{m: 1 for m in MODELS}, {m: 2 for m in MODELS}]


def test_an_export_killed_at_each_step_of_its_publish_is_finished_by_the_next_run(tiny_exported, tiny_pipeline,
                                                                                     tmp_path):
    _, _, retrieval_dir, ranking_dir = tiny_pipeline
    base = tmp_path / "saved_models"
    shutil.copytree(tiny_exported[2], base)
    shutil.copytree(state_root(tiny_exported[2]), state_root(base))
    args = ["export", "--retrieval", str(retrieval_dir), "--ranking", str(ranking_dir), "--out", str(base),
            "--index", "brute_force"]
    with SetWatcher(base, MODELS) as watch:
        watch.wait_for(1)
        killed = run_killed("save:2", args)  # two models written aside, none in place
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert all(versions(base / m) == [1] for m in MODELS) and list(base.glob("*/.tmp-2-*"))
        killed = run_killed("rename:1", args)  # retrieval 2 in place, the set incomplete
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert versions(base / "retrieval") == [1, 2] and not is_complete(base / "retrieval", 2)
        time.sleep(0.5)
        assert watch.manager.served_versions() == {m: [1] for m in MODELS}
        final = run_killed(None, args)  # finishes version 2: only the models it lacks are written
        assert final.returncode == 0, final.stdout + final.stderr
        assert "resuming the interrupted publish of version 2" in final.stdout
        assert "exporting ranking" in final.stdout and "exporting retrieval" not in final.stdout
        watch.wait_for(2)
    assert watch.mixes == [] and [set(s.values()) for s in watch.seen] == [{1}, {2}]
    ids = {json.loads((base / m / "2" / "assets" / METADATA_FILE).read_text())["set"]["id"] for m in MODELS}
    assert len(ids) == 1
    assert not list(base.glob("*/.tmp-*")) and not list(state_root(base).glob(".*"))
