"""Data safety: stop signals during a conversion leave nothing behind (and what a killed one left
is swept), any COCO image id 0 .. 2^63-1 round-trips, bad ids are errors naming the image, an
image that cannot be decoded is named when the pipeline meets it, decompression bombs are
reported by the check."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from src.anchors import generate_default_boxes
from src.box_coder import BoxCoder
from src.config import Config
from src.data import mindrecord
from src.data.coco import read_coco
from src.data.mindrecord import (
    FORMAT_VERSION,
    current_set,
    manifest_path,
    staging_name,
    write_set,
)
from src.data.records import DatasetError
from src.data.sources import prepare_split
from tests.conftest import ROOT

QUIET = {"progress": False, "log": lambda message: None}
SHIFT = 3_000_000_000
LARGEST_ID = 2 ** 63 - 1


def leftovers(directory, prefix="x"):
    return sorted(n for n in os.listdir(directory) if n.startswith(f".{prefix}.partial-"))


def copy_demo(demo_root, tmp_path, ids=None):
    """A copy of the demo set whose image ids are mapped by ``ids`` (old id -> new id)."""
    root = tmp_path / "coco"
    shutil.copytree(demo_root, root)
    if ids:
        for split in ("train2017", "val2017"):
            path = root / "annotations" / f"instances_{split}.json"
            data = json.loads(path.read_text())
            for image in data["images"]:
                image["id"] = ids(image["id"])
            for annotation in data["annotations"]:
                annotation["image_id"] = ids(annotation["image_id"])
            path.write_text(json.dumps(data))
    return str(root)


def coco_config(root, directory, **changes):
    return Config(**{"coco_root": root, "num_classes": 4, "mindrecord_dir": str(directory),
                     "mindrecord_shards": 2, **changes})


# --- A. interrupted conversions ------------------------------------------------------------

@pytest.mark.parametrize("name, raised", [("SIGTERM", SystemExit), ("SIGINT", KeyboardInterrupt)])
def test_a_stop_signal_during_conversion_removes_the_staging_folder(demo_root, tmp_path,
                                                                   monkeypatch, name, raised):
    number = getattr(signal, name)
    usual = signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL
    before = signal.signal(number, usual)   # as a Python process has it (not SIG_IGN)
    records = read_coco(demo_root, "train2017").records
    staging = tmp_path / staging_name("x", os.getpid())
    seen, read = [], mindrecord._read_bytes

    def read_then_signal(record):
        if record is records[2]:
            seen.append(staging.is_dir())
            os.kill(os.getpid(), number)
        return read(record)

    monkeypatch.setattr(mindrecord, "_read_bytes", read_then_signal)
    try:
        with pytest.raises(raised) as stop:
            write_set(records, str(tmp_path), "x", 2, {"inputs": {}}, progress=False)
        assert signal.getsignal(number) == usual
    finally:
        signal.signal(number, before)
    assert seen == [True]
    if raised is SystemExit:
        assert stop.value.code == 128 + signal.SIGTERM
    assert sorted(os.listdir(tmp_path)) == []           # no staging folder, no set, no manifest


def test_a_signal_during_the_cleanup_waits_until_it_is_done(demo_root, tmp_path, monkeypatch):
    """A second signal while the staging folder is removed is ignored; a signal that comes
    while a finished conversion cleans up stops the process once the set is complete."""
    records = read_coco(demo_root, "train2017").records
    real_rmtree = shutil.rmtree

    class SignallingShutil:
        @staticmethod
        def rmtree(path, ignore_errors=False):
            if os.path.isdir(path):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)                     # the handler runs here: it must not raise
            real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(mindrecord, "shutil", SignallingShutil)
    with pytest.raises(SystemExit) as stop:
        write_set(records, str(tmp_path), "x", 2, {"inputs": {}}, progress=False)
    assert stop.value.code == 143
    assert not leftovers(tmp_path)
    assert current_set(str(tmp_path), "x", {"inputs": {}})      # complete, and reusable

    def read_then_signal(record, read=mindrecord._read_bytes):
        if record is records[1]:
            os.kill(os.getpid(), signal.SIGTERM)
        return read(record)

    monkeypatch.setattr(mindrecord, "_read_bytes", read_then_signal)
    with pytest.raises(SystemExit):
        write_set(records, str(tmp_path / "again"), "x", 2, {"inputs": {}}, progress=False)
    assert os.listdir(tmp_path / "again") == []


CONVERT = """
import sys, time
sys.path.insert(0, {root!r})
from src.cli import run

def convert(config):
    from src.data import mindrecord
    from src.data.sources import prepare_split
    read = mindrecord._read_bytes

    def slow(record):
        time.sleep(2)
        return read(record)

    mindrecord._read_bytes = slow
    prepare_split(config, "train", config.mindrecord_dir, progress=False)

sys.exit(run(convert, "convert", ["--coco_root", {data!r}, "--num_classes", "4",
                                  "--mindrecord_dir", {mr!r}, "--mindrecord_shards", "2"]))
"""


def start_and_signal(code, directory, number):
    """Start a conversion process, send it ``number`` once its staging folder exists."""
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    staging = os.path.join(directory, staging_name("ssd.mindrecord", process.pid))
    deadline = time.time() + 120
    while not os.path.isdir(staging) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    found = os.path.isdir(staging)
    process.send_signal(number)
    out, err = process.communicate(timeout=120)
    assert found, (out, err)
    return process, staging, err


def test_sigterm_stops_a_conversion_process_cleanly_and_the_next_sweeps_dead_leftovers(
        demo_root, tmp_path):
    mr = str(tmp_path / "mr")
    code = CONVERT.format(root=ROOT, data=demo_root, mr=mr)
    process, staging, err = start_and_signal(code, mr, signal.SIGTERM)
    assert process.returncode == 143, err
    assert "SIGTERM received: the conversion into" in err and "Traceback" not in err
    assert not os.path.exists(staging) and not os.path.exists(manifest_path(mr,
                                                                            "ssd.mindrecord"))
    killed, left, _ = start_and_signal(code, mr, signal.SIGKILL)  # nothing can clean up
    assert killed.returncode == -signal.SIGKILL and os.path.isdir(left)
    alive = os.path.join(mr, staging_name("ssd.mindrecord", 1))   # pid 1 always runs
    os.makedirs(alive)
    messages = []
    prepared = prepare_split(coco_config(demo_root, mr), "train", mr, progress=False,
                             log=messages.append)
    assert not os.path.exists(left) and os.path.isdir(alive)
    assert any(os.path.basename(left) in m and "interrupted" in m for m in messages), messages
    assert prepared.images == 12 and leftovers(mr, "ssd.mindrecord") == [
        os.path.basename(alive)]


# --- B. image ids of any size -------------------------------------------------------------

def test_image_ids_beyond_int32_round_trip_through_conversion_pipelines_and_scoring(
        demo_root, tmp_path, graph_cpu):
    from src.boxes import yxyx_to_xywh
    from src.data.pipeline import create_eval_dataset, create_train_dataset
    from src.detections import PostProcessor
    from src.metrics import coco_evaluate

    root = copy_demo(demo_root, tmp_path, lambda i: LARGEST_ID if i in (1, 13) else i + SHIFT)
    config = coco_config(root, tmp_path / "mr")
    train = prepare_split(config, "train", str(tmp_path), **QUIET)
    expected = sorted(r.img_id for r in train.source.records)
    assert LARGEST_ID in expected and min(expected) > 2 ** 31
    data = create_train_dataset(train.files, BoxCoder(generate_default_boxes()), 4)
    seen = []
    for batch in data.create_dict_iterator(num_epochs=1, output_numpy=True):
        assert batch["img_id"].dtype == np.int64 and batch["img_id"].shape == (4, 1)
        seen.extend(int(i) for i in batch["img_id"].ravel())
    assert sorted(seen) == expected
    evaluation = prepare_split(config, "eval", str(tmp_path), **QUIET)
    records = evaluation.source.records
    ids = [int(i) for b in create_eval_dataset(evaluation.files, 3).create_dict_iterator(
        num_epochs=1, output_numpy=True) for i in b["img_id"].ravel()]
    assert sorted(ids) == sorted(r.img_id for r in records) and min(ids) > SHIFT
    assert LARGEST_ID in expected + ids
    post = PostProcessor(evaluation.source.category_ids)
    detections = post.new_store()
    for record in records:
        detections.add(np.int64(record.img_id), yxyx_to_xywh(record.boxes),
                       np.ones(len(record.labels)), record.labels)
    found = detections.records()
    assert {d["image_id"] for d in found} == {r.img_id for r in records if len(r.labels)}
    assert all(type(d["image_id"]) is int for d in found)
    detections.write_json(str(tmp_path / "detections.json"))
    assert json.load(open(tmp_path / "detections.json")) == found
    for library in ("ultrafast", "pycocotools"):
        stats = coco_evaluate(evaluation.ground_truth, detections, ids, library=library).stats
        assert stats[0] == pytest.approx(1.0), library


def test_a_set_of_the_int32_format_is_rebuilt(demo_root, tmp_path, graph_cpu):
    import mindspore.dataset as ds

    config = coco_config(demo_root, tmp_path)
    prepared = prepare_split(config, "train", str(tmp_path), **QUIET)
    path = manifest_path(str(tmp_path), "ssd.mindrecord")
    manifest = json.load(open(path))
    assert manifest["description"]["format_version"] == FORMAT_VERSION >= 3
    manifest["description"]["format_version"] = 2            # as the int32 version wrote it
    json.dump(manifest, open(path, "w"))
    messages = []
    prepare_split(config, "train", str(tmp_path), progress=False, log=messages.append)
    assert any("Writing" in m for m in messages), messages
    row = next(ds.MindDataset(prepared.files, shuffle=False).create_dict_iterator(
        num_epochs=1, output_numpy=True))
    assert row["img_id"].dtype == np.int64


def test_bad_image_ids_are_errors_naming_the_file_and_the_image(tmp_path):
    os.makedirs(tmp_path / "annotations")
    os.makedirs(tmp_path / "val2017")
    names = ["neg.jpg", "half.jpg", "text.jpg", "flag.jpg", "huge.jpg", "fine.jpg"]
    ids = [-5, 2.5, "7", True, 2 ** 63, 3.0]
    for name in names:
        cv2.imwrite(str(tmp_path / "val2017" / name), np.zeros((20, 30, 3), np.uint8))
    data = {"images": [{"id": i, "file_name": n, "height": 20, "width": 30}
                       for i, n in zip(ids, names)],
            "annotations": [{"id": 1, "image_id": 3.5, "category_id": 1,
                             "bbox": [1, 1, 5, 5]},
                            {"id": 2, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]}],
            "categories": [{"id": 1, "name": "a"}]}
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(data))
    source = read_coco(str(tmp_path), "val2017")
    assert [r.img_id for r in source.records] == [3] and len(source.records[0].labels) == 1
    text = [str(p) for p in source.problems]
    assert text == [
        f"error: {path} (images[0] (neg.jpg)): image id -5 is negative (image ids must be "
        "integers 0..2^63-1)",
        f"error: {path} (images[1] (half.jpg)): image id 2.5 is not an integer (image ids must "
        "be integers 0..2^63-1)",
        f"error: {path} (images[2] (text.jpg)): image id '7' is not an integer (image ids "
        "must be integers 0..2^63-1)",
        f"error: {path} (images[3] (flag.jpg)): image id True is not an integer (image ids "
        "must be integers 0..2^63-1)",
        f"error: {path} (images[4] (huge.jpg)): image id {2 ** 63} is above 2^63-1, the "
        "largest id a MindRecord set stores (image ids must be integers 0..2^63-1)",
        f"error: {path} (annotations[0] (id 1)): image_id 3.5 is not an integer (image ids "
        "must be integers 0..2^63-1)"]
    config = Config(coco_root=str(tmp_path), mindrecord_dir=str(tmp_path / "mr"),
                    skip_bad_samples=True)
    with pytest.raises(DatasetError, match=r"images\[0\] \(neg.jpg\)"):
        prepare_split(config, "eval", str(tmp_path), **QUIET)


# --- C. images that cannot be decoded, huge images -----------------------------------------

def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def test_an_image_that_cannot_be_decoded_is_named_when_the_pipeline_meets_it(
        demo_root, tmp_path, graph_cpu):
    from src.cli import is_expected
    from src.data.pipeline import batches, create_eval_dataset, create_train_dataset
    from src.train.step_feed import sunk_steps
    from tests.test_step_feed import host_sink

    root = copy_demo(demo_root, tmp_path)
    bad = {}
    for split in ("train2017", "val2017"):
        record = read_coco(root, split).records[1]
        truncate(record.path)
        bad[split] = record.img_id
    config = coco_config(root, tmp_path / "mr", check_images=False)
    train = prepare_split(config, "train", str(tmp_path), **QUIET)
    assert train.images == 12                              # only the headers were read
    data = create_train_dataset(train.files, BoxCoder(generate_default_boxes()), 2)
    with pytest.raises(DatasetError) as error:
        for _ in batches(data.skip(1), train.files, num_epochs=1):
            pass
    message = str(error.value)
    assert f"image id {bad['train2017']} cannot be decoded" in message
    assert "--check_images true" in message and "--skip_bad_samples true" in message
    assert str(tmp_path / "mr" / "ssd.mindrecord") in message and is_expected(error.value)
    # the same through the data-sink loop (a host stand-in for ms.data_sink: CPU has none)
    data = create_train_dataset(train.files, BoxCoder(generate_default_boxes()), 2)
    with pytest.raises(DatasetError, match=f"image id {bad['train2017']} cannot be decoded"):
        list(sunk_steps(lambda *batch: (), data.skip(1), train.files, 5, sink=host_sink))
    evaluation = prepare_split(config, "eval", str(tmp_path), **QUIET)
    with pytest.raises(DatasetError, match=f"image id {bad['val2017']} cannot be decoded"):
        list(batches(create_eval_dataset(evaluation.files, 2), evaluation.files, dicts=True,
                     num_epochs=1))
    checked = prepare_split(config.replace(check_images=True, skip_bad_samples=True), "train",
                            str(tmp_path), **QUIET)
    assert checked.images == 11 and checked.check["skipped_images"] == 1
    batches = create_train_dataset(checked.files, BoxCoder(generate_default_boxes()), 2)
    assert sum(1 for _ in batches.create_tuple_iterator(num_epochs=1)) == 5


@pytest.mark.parametrize("decode", [True, False])
def test_a_decompression_bomb_is_reported_like_any_bad_image(tmp_path, monkeypatch, decode):
    from PIL import Image

    from src.data.check import apply_policy, check_source

    os.makedirs(tmp_path / "annotations")
    os.makedirs(tmp_path / "val2017")
    cv2.imwrite(str(tmp_path / "val2017" / "huge.jpg"), np.zeros((200, 300, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "val2017" / "small.jpg"), np.zeros((20, 30, 3), np.uint8))
    data = {"images": [{"id": 1, "file_name": "huge.jpg"}, {"id": 2, "file_name": "small.jpg"}],
            "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # huge.jpg: 60,000 > 2 x the limit
    source = read_coco(str(tmp_path), "val2017")
    report = check_source(source, decode_images=decode, progress=False)
    (problem,) = report.errors
    assert problem.file.endswith("huge.jpg") and problem.where == "image id 1"
    assert "too large to decode safely" in problem.message
    assert "decompression bomb" in problem.message
    with pytest.raises(DatasetError, match="huge.jpg"):
        apply_policy(source, report)
    kept = apply_policy(source, report, skip_bad_samples=True)
    assert [r.img_id for r in kept.records] == [2] and report.skipped == 1


# --- D. a set that a running job reads -----------------------------------------------------

HOLD = """
import sys
sys.path.insert(0, {root!r})
from src.config import Config
from src.device import prepare_process
prepare_process(Config())
from src.data.sources import prepare_split

prepared = prepare_split(Config(coco_root={data!r}, num_classes=4, mindrecord_dir={mr!r},
                                mindrecord_shards=2), "train", {mr!r}, progress=False,
                         log=lambda message: None)
print("holding", prepared.images, flush=True)
sys.stdin.read()                      # holds the set until the test closes this pipe
"""


def set_contents(directory):
    """Every file of the sets in ``directory`` (not the hidden lock and hold files), as bytes."""
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory)) if not name.startswith(".")}


def with_one_box_moved(demo_root, tmp_path):
    """A copy of the demo data with one training box moved: other data for the same set."""
    root = copy_demo(demo_root, tmp_path)
    path = os.path.join(root, "annotations", "instances_train2017.json")
    data = json.load(open(path))
    data["annotations"][0]["bbox"][0] += 1
    json.dump(data, open(path, "w"))
    return root


def can_lock(path, kind):
    """Whether a new open file could take ``kind`` (fcntl.LOCK_SH or LOCK_EX) on ``path``."""
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def test_a_set_a_running_job_reads_is_replaced_only_after_it_ends(demo_root, tmp_path):
    import fcntl
    import gc
    import select
    import warnings

    from src.cli import is_expected

    mr = str(tmp_path / "mr")
    other = with_one_box_moved(demo_root, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=ROOT, data=demo_root,
                                                                 mr=mr)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 300)
        line = holder.stdout.readline() if ready else ""
        assert line == "holding 12\n", (line, holder.poll())
        before = set_contents(mr)
        held = mindrecord.hold_path(mr, "ssd.mindrecord", mindrecord.holder_id(holder.pid))
        assert os.path.isfile(held) and not can_lock(held, fcntl.LOCK_EX)
        with pytest.raises(DatasetError) as refused:
            prepare_split(coco_config(other, mr), "train", mr, **QUIET)
        message = str(refused.value)
        assert f"MindRecord set {os.path.join(mr, 'ssd.mindrecord')}* is in use" in message
        assert f"pid {holder.pid} on" in message and "--mindrecord_url" in message
        assert "nothing was changed" in message and is_expected(refused.value)
        assert set_contents(mr) == before and not leftovers(mr, "ssd.mindrecord")
        with pytest.raises(DatasetError) as mismatch:      # the data's own problem comes first
            prepare_split(coco_config(demo_root, mr, num_classes=5), "train", mr, **QUIET)
        assert "num_classes is 5" in str(mismatch.value)
        assert "in use" not in str(mismatch.value)
        messages = []
        reader = prepare_split(coco_config(demo_root, mr), "train", mr, progress=False,
                               log=messages.append)       # the same data: shared with the job
        assert any("Reusing" in m for m in messages) and reader.images == 12
        assert reader.hold.held and reader.hold.path != held
        assert not can_lock(reader.hold.path, fcntl.LOCK_EX)
        assert can_lock(reader.hold.path, fcntl.LOCK_SH) and set_contents(mr) == before
    finally:
        try:
            _, err = holder.communicate("", timeout=120)    # closing its stdin ends it
        except subprocess.TimeoutExpired:
            holder.kill()
            _, err = holder.communicate()
    assert holder.returncode == 0, err
    assert os.path.isfile(held)                              # until the next one comes
    again = prepare_split(coco_config(demo_root, mr), "train", mr, **QUIET)
    assert not os.path.exists(held) and again.hold.path == reader.hold.path
    messages = []
    replaced = prepare_split(coco_config(other, mr), "train", mr, progress=False,
                             log=messages.append)   # this process's own holds do not count
    assert any("Writing" in m for m in messages) and set_contents(mr) != before
    assert replaced.hold.path == reader.hold.path
    reader.release()
    reader.release()
    assert not reader.hold.held and not can_lock(replaced.hold.path, fcntl.LOCK_EX)
    again.release()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        del replaced                                      # the last hold: ends with its split
        gc.collect()
    assert can_lock(reader.hold.path, fcntl.LOCK_EX)
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)], seen
    untestable = [mindrecord.hold_path(mr, "ssd.mindrecord", name) for name in ("elsewhere-7",
                                                                              "odd")]
    for path in untestable:
        os.makedirs(path)                                 # cannot be locked: taken as held
    after = set_contents(mr)
    with pytest.raises(DatasetError, match="in use: a running job reads it \\(pid 7 on "
                                           "elsewhere, odd\\)"):
        prepare_split(coco_config(demo_root, mr), "train", mr, **QUIET)
    assert set_contents(mr) == after and all(os.path.isdir(path) for path in untestable)
