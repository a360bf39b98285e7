"""Tests for the synthetic COCO-layout data set generator ``src.demo_data``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from src import demo_data

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = {"min_size": 96, "max_size": 160}


def annotation_path(root, split):
    return Path(root) / "annotations" / f"instances_{split}.json"


def image_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(Path(root).rglob("*.jpg"))}


def json_bytes(root):
    return {split: annotation_path(root, split).read_bytes() for split in demo_data.SPLITS}


def mask_extent(mask):
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()),
            float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    summary = demo_data.generate(root, 6, 3, seed=11, **SMALL)
    return root, summary


def test_coco_files_load_and_match_images(tiny_set):
    root, summary = tiny_set
    image_ids, names = set(), set()
    for split, expected in zip(demo_data.SPLITS, (6, 3)):
        coco = COCO(str(annotation_path(root, split)))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(demo_data.CLASS_NAMES)
        assert coco.getCatIds() == [1, 2, 3]
        assert len(coco.getImgIds()) == expected == summary["splits"][split]["images"]
        ann_ids = coco.getAnnIds()
        assert len(ann_ids) == len(set(ann_ids)) == summary["splits"][split]["boxes"]
        assert sorted(ann_ids) == list(range(1, len(ann_ids) + 1))
        for info in coco.loadImgs(coco.getImgIds()):
            assert info["id"] not in image_ids and info["file_name"] not in names
            image_ids.add(info["id"])
            names.add(info["file_name"])
            assert info["file_name"] == f"{info['id']:012d}.jpg"
            image = cv2.imread(str(root / split / info["file_name"]))
            assert image is not None and image.shape == (info["height"], info["width"], 3)
            assert 96 <= info["width"] <= 160 and 96 <= info["height"] <= 160
            anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
            if split == "val2017":
                assert anns
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert all(isinstance(v, float) for v in ann["bbox"])
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= info["width"] and y + h <= info["height"]
                assert ann["iscrowd"] == 0 and ann["category_id"] in (1, 2, 3)
                assert 0 < ann["area"] <= w * h
                seg = coco.annToMask(ann)
                assert seg.shape == image.shape[:2] and seg.any()
        assert (root / split).is_dir() and len(os.listdir(root / split)) == expected


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 5), (b, 5), (c, 6)):
        demo_data.generate(root, 3, 2, seed=seed, **SMALL)
    assert json_bytes(a) == json_bytes(b)
    assert image_bytes(a) == image_bytes(b)
    assert json_bytes(a) != json_bytes(c)
    assert all(image_bytes(a)[k] != v for k, v in image_bytes(c).items())


def test_rerun_overwrites_smaller_set_cleanly(tmp_path):
    demo_data.generate(tmp_path, 4, 2, seed=1, **SMALL)
    demo_data.generate(tmp_path, 2, 1, seed=1, **SMALL)
    assert sorted(os.listdir(tmp_path / "train2017")) == ["000000000001.jpg", "000000000002.jpg"]
    assert sorted(os.listdir(tmp_path / "val2017")) == ["000000000003.jpg"]
    assert not list(tmp_path.rglob("*.tmp"))
    fresh = tmp_path / "fresh"
    demo_data.generate(fresh, 2, 1, seed=1, **SMALL)
    assert json_bytes(tmp_path) == json_bytes(fresh)


def test_boxes_are_exact_extent_of_drawn_pixels():
    checked = 0
    for index in range(6):
        sample = demo_data.render_sample(3, 1, index, **SMALL)
        changed = np.any(sample.image != sample.background, axis=2)
        union = np.zeros(changed.shape, bool)
        for k, obj in enumerate(sample.objects):
            drawn = obj.mask > 0
            assert obj.bbox == mask_extent(drawn)
            assert obj.area == float(drawn.sum())
            visible = drawn.copy()
            for later in sample.objects[k + 1:]:
                visible &= later.mask == 0
            assert changed[visible].all()
            union |= drawn
            checked += 1
        assert not changed[~union].any()
        if sample.objects:
            assert mask_extent(changed) == mask_extent(union)
    assert checked >= 6


def test_written_boxes_match_rendered_pixels(tiny_set):
    root, _ = tiny_set
    document = json.loads(annotation_path(root, "val2017").read_text())
    first_val_id = document["images"][0]["id"]
    for index, info in enumerate(document["images"]):
        sample = demo_data.render_sample(11, 1, index, **SMALL)
        boxes = [a["bbox"] for a in document["annotations"] if a["image_id"] == info["id"]]
        assert boxes == [obj.bbox for obj in sample.objects]
        top = sample.objects[-1]
        decoded = cv2.imread(str(root / "val2017" / info["file_name"])).astype(np.float32)
        diff = np.abs(decoded - sample.background).sum(axis=2)
        inside = top.mask > 0
        ring = cv2.dilate(inside.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        ring &= ~cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        for obj in sample.objects:
            ring &= obj.mask == 0
        assert ring.any()
        assert diff[inside].mean() > 3 * diff[ring].mean() + 10
    assert first_val_id == 7


def test_empty_train_images_are_listed(tmp_path):
    summary = demo_data.generate(tmp_path, 4, 1, seed=2, empty_fraction=1.0, **SMALL)
    train = json.loads(annotation_path(tmp_path, "train2017").read_text())
    val = json.loads(annotation_path(tmp_path, "val2017").read_text())
    assert len(train["images"]) == 4 and train["annotations"] == []
    assert summary["splits"]["train2017"]["empty_images"] == 4
    assert val["annotations"] and summary["splits"]["val2017"]["empty_images"] == 0
    coco = COCO(str(annotation_path(tmp_path, "train2017")))
    assert all(not coco.getAnnIds(imgIds=i) for i in coco.getImgIds())


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "src.demo_data", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_dataset(tmp_path):
    result = run_cli("--out", str(tmp_path), "--num_train", "2", "--num_val", "1", "--seed", "4",
                     "--min_size", "96", "--max_size", "128")
    assert result.returncode == 0, result.stderr
    assert "train2017: 2 images" in result.stdout and str(tmp_path) in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1
    assert len(COCO(str(annotation_path(tmp_path, "val2017"))).getImgIds()) == 1


@pytest.mark.parametrize(
    "flag, value", [("--num_train", "0"), ("--num_val", "0"), ("--seed", "-1")])
def test_cli_rejects_bad_counts(tmp_path, flag, value):
    args = {"--out": str(tmp_path / "x"), "--num_train": "1", "--num_val": "1", "--seed": "0"}
    args[flag] = value
    result = run_cli(*[item for pair in args.items() for item in pair])
    assert result.returncode != 0
    assert flag in result.stderr
    assert not (tmp_path / "x").exists()


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        demo_data.generate(tmp_path, 0, 1, seed=0)
    with pytest.raises(ValueError, match="min_size"):
        demo_data.generate(tmp_path, 1, 1, seed=0, min_size=300, max_size=200)
    with pytest.raises(ValueError, match="unknown"):
        demo_data.generate(tmp_path, 1, 1, seed=0, colour="red")


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def marker(root):
    return json.loads((Path(root) / demo_data.MARKER_NAME).read_text())


def test_annotations_are_those_of_the_version_before_the_marker(tmp_path):
    """The ownership marker changed nothing in the data: the annotation files' digest is the
    one HEAD e7e1379's generator gives for these arguments (its images were compared byte for
    byte too, by hand: identical)."""
    import hashlib

    demo_data.generate(tmp_path, 3, 2, seed=5, **SMALL)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(tmp_path.rglob("*.json"))
                                     if p.name != demo_data.MARKER_NAME))
    assert digest.hexdigest() == "53bdfb39c3d6b124d5d4a706fb771db5b52d9142aafe75b1e124923ff7ec11bf"
    written = marker(tmp_path)
    assert written["complete"] is True and written["written_by"] == "src.demo_data"
    assert written["files"] == sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
        if p.is_file() and p.name != demo_data.MARKER_NAME)


def coco_like_folder(root):
    """What the issue saw destroyed: a COCO folder with its own annotation file and image."""
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"info": {"description": "COCO 2017 Dataset"}, "images": [], "annotations": [],
         "categories": []}))
    (root / "train2017" / "000000391895.jpg").write_bytes(b"\xff\xd8 a COCO picture \xff\xd9")
    return tree_bytes(root)


def test_cli_refuses_a_folder_it_did_not_write_and_touches_nothing(tmp_path):
    before = coco_like_folder(tmp_path)
    result = run_cli("--out", str(tmp_path), "--num_train", "2", "--num_val", "1",
                     "--min_size", "96", "--max_size", "128")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: --out {tmp_path}: the folder is not empty")
    assert "instances_train2017.json is not the demo's" in result.stderr
    assert "'COCO 2017 Dataset'" in result.stderr and "delete" in result.stderr
    assert tree_bytes(tmp_path) == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "000000391895.jpg", "annotations", "instances_train2017.json", "train2017"]


@pytest.mark.parametrize("foreign", ["notes.txt", "train2017/holiday.png", "val2017/sub/x.jpg"])
def test_refuses_a_folder_with_any_other_file(tmp_path, foreign):
    (tmp_path / foreign).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / foreign).write_text("mine")
    with pytest.raises(ValueError, match=f"{foreign} is not a file it writes"):
        demo_data.generate(tmp_path, 2, 1, seed=0, **SMALL)
    assert tree_bytes(tmp_path) == {foreign: b"mine"}


def test_empty_folders_and_a_rerun_into_its_own_folder_work(tmp_path):
    (tmp_path / "train2017").mkdir()            # empty folders are no one's files
    demo_data.generate(tmp_path, 4, 2, seed=1, **SMALL)
    (tmp_path / "notes.txt").write_text("mine")           # the user's, next to the set
    (tmp_path / "train2017" / "holiday.png").write_text("mine")
    demo_data.generate(tmp_path, 2, 1, seed=1, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path / "train2017")) == [
        "000000000001.jpg", "000000000002.jpg", "holiday.png"]
    assert sorted(os.listdir(tmp_path / "val2017")) == ["000000000003.jpg"]
    assert marker(tmp_path)["files"] == demo_data.planned_files(2, 1)
    fresh = tmp_path / "fresh"
    demo_data.generate(fresh, 2, 1, seed=1, **SMALL)
    assert json_bytes(tmp_path) == json_bytes(fresh) and image_bytes(fresh) == {
        k: v for k, v in image_bytes(tmp_path).items() if not k.startswith("fresh/")}


def test_own_folder_refuses_to_overwrite_a_file_its_marker_does_not_list(tmp_path):
    demo_data.generate(tmp_path, 2, 1, seed=1, **SMALL)
    (tmp_path / "val2017" / "000000000004.jpg").write_bytes(b"someone else's")
    before = tree_bytes(tmp_path)
    with pytest.raises(ValueError, match=r"val2017/000000000004\.jpg is in the way"):
        demo_data.generate(tmp_path, 2, 2, seed=1, **SMALL)
    assert tree_bytes(tmp_path) == before


def test_interrupted_run_leaves_a_folder_the_next_run_owns(tmp_path, monkeypatch):
    demo_data.generate(tmp_path, 2, 1, seed=1, **SMALL)
    original, calls = demo_data.encode_jpeg, []

    def failing_encode(image, quality):      # Ctrl-C while the fourth image is written
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return original(image, quality)

    monkeypatch.setattr(demo_data, "encode_jpeg", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        demo_data.generate(tmp_path, 5, 1, seed=1, **SMALL)
    assert marker(tmp_path)["complete"] is False
    assert set(marker(tmp_path)["files"]) >= set(demo_data.planned_files(5, 1))
    monkeypatch.setattr(demo_data, "encode_jpeg", original)
    demo_data.generate(tmp_path, 3, 1, seed=1, **SMALL)
    assert marker(tmp_path)["complete"] is True
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg")) == [
        "train2017/000000000001.jpg", "train2017/000000000002.jpg",
        "train2017/000000000003.jpg", "val2017/000000000004.jpg"]


def legacy_set(root):
    """A data set as the version before the marker left it: the same files, no marker."""
    demo_data.generate(root, 3, 1, seed=2, **SMALL)
    (root / demo_data.MARKER_NAME).unlink()
    return tree_bytes(root)


def test_older_versions_demo_folder_is_taken_over(tmp_path):
    before = legacy_set(tmp_path)
    demo_data.generate(tmp_path, 2, 1, seed=2, **SMALL)
    assert marker(tmp_path)["files"] == demo_data.planned_files(2, 1)
    assert not (tmp_path / "train2017" / "000000000003.jpg").exists()    # its own stale image
    assert tree_bytes(tmp_path)["train2017/000000000001.jpg"] == before[
        "train2017/000000000001.jpg"]


@pytest.mark.parametrize("change, reason", [
    ("extra_image", "train2017/000000391895.jpg is not listed in "
                    "annotations/instances_train2017.json"),
    ("description", "annotations/instances_val2017.json is not the demo's"),
    ("no_annotation", "annotations/instances_train2017.json is missing"),
    ("not_json", "annotations/instances_train2017.json is not the demo's"),
])
def test_older_looking_folder_is_refused_unless_it_is_exactly_the_demos(tmp_path, change,
                                                                         reason):
    legacy_set(tmp_path)
    train, val = annotation_path(tmp_path, "train2017"), annotation_path(tmp_path, "val2017")
    if change == "extra_image":
        (tmp_path / "train2017" / "000000391895.jpg").write_bytes(b"a COCO picture")
    elif change == "description":
        document = json.loads(val.read_text())
        document["info"]["description"] = "COCO 2017 Dataset"
        val.write_text(json.dumps(document))
    elif change == "no_annotation":
        train.unlink()
    else:
        train.write_text("{not json")
    before = tree_bytes(tmp_path)
    with pytest.raises(ValueError, match="not written by src.demo_data") as error:
        demo_data.generate(tmp_path, 3, 1, seed=2, **SMALL)
    assert reason in str(error.value) and str(tmp_path) in str(error.value)
    assert tree_bytes(tmp_path) == before


@pytest.mark.parametrize("content, reason", [
    ("{broken", "cannot be read as src.demo_data's marker"),
    (json.dumps({"written_by": "someone", "files": []}), "not src.demo_data's marker"),
    (json.dumps({"written_by": "src.demo_data", "files": ["../elsewhere.jpg"]}),
     "lists '../elsewhere.jpg', which src.demo_data never writes"),
])
def test_a_marker_it_did_not_write_is_refused(tmp_path, content, reason):
    (tmp_path / demo_data.MARKER_NAME).write_text(content)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=demo_data.MARKER_NAME.replace(".", r"\.")) as error:
        demo_data.generate(tmp_path, 2, 1, seed=0, **SMALL)
    assert reason in str(error.value)
    assert sorted(os.listdir(tmp_path)) == [demo_data.MARKER_NAME, "notes.txt"]


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "data"
    target.write_text("mine")
    result = run_cli("--out", str(target), "--num_train", "1", "--num_val", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == f"error: --out {target}: exists and is not a folder\n"
    assert target.read_text() == "mine"
