"""YOLO datasets (Ultralytics / Roboflow exports): data.yaml, images/ and labels/ read into the
same targets as COCO; every faulty line named with its file and line; converted and checked as
the other formats."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from src.anchors import generate_default_boxes
from src.box_coder import BoxCoder
from src.config import Config
from src.config_loader import parse_config
from src.data.readers import read_source
from src.data.records import ERROR, WARNING, DatasetError
from tests.conftest import ROOT
from tests.test_formats import BOXES, HEIGHT, WIDTH, converted_rows, make_coco, write_image


def yolo_line(x1, y1, x2, y2, c):
    """A label line for a pixel box of class index c (1-based) in a WIDTH x HEIGHT image."""
    return (f"{c - 1} {(x1 + x2) / 2 / WIDTH!r} {(y1 + y2) / 2 / HEIGHT!r} "
            f"{(x2 - x1) / WIDTH!r} {(y2 - y1) / HEIGHT!r}")


def make_yolo(root, train_lines=None, val_lines=None, names=("a", "b"), layout="ultralytics",
              data=None):
    """A YOLO dataset of one image per split: Ultralytics' layout (images/<split>/,
    labels/<split>/) or Roboflow's (<split>/images/, <split>/labels/, data.yaml's paths
    starting with ../)."""
    lines = {"train": train_lines, "val": val_lines}
    for split in ("train", "val"):
        if layout == "ultralytics":
            images, labels = (os.path.join(root, kind, split) for kind in ("images", "labels"))
        else:
            images, labels = (os.path.join(root, split, kind) for kind in ("images", "labels"))
        write_image(os.path.join(images, f"{split}_img.jpg"))
        os.makedirs(labels, exist_ok=True)
        chosen = lines[split] if lines[split] is not None else [yolo_line(*b) for b in BOXES]
        with open(os.path.join(labels, f"{split}_img.txt"), "w") as f:
            f.write("\n".join(chosen) + "\n")
    splits = ({"train": "images/train", "val": "images/val"} if layout == "ultralytics" else
              {"train": "../train/images", "val": "../val/images"})
    document = {**splits, "nc": len(names), "names": list(names), **(data or {})}
    with open(os.path.join(root, "data.yaml"), "w") as f:
        yaml.safe_dump(document, f)
    return str(root)


def yolo_config(root, **changes):
    return Config(dataset="yolo", yolo_data=str(root), **changes)


@pytest.mark.parametrize("layout", ["ultralytics", "roboflow"])
def test_a_yolo_image_gives_the_coco_images_targets(tmp_path, graph_cpu, layout):
    """The same image and boxes as COCO and as YOLO lines: the same pixel boxes, MindRecord
    rows and encoded targets; class names from data.yaml; --data_url sets the dataset."""
    make_coco(tmp_path / "coco")
    root = make_yolo(tmp_path / "yolo", layout=layout)
    coder = BoxCoder(generate_default_boxes())
    targets = {}
    for name, config in (("coco", Config(dataset="coco", coco_root=str(tmp_path / "coco"),
                                         num_classes=3)),
                         ("yolo", parse_config(["--dataset", "yolo", "--data_url", root]))):
        config = config.replace(mindrecord_dir=str(tmp_path / f"mr-{name}"))
        prepared, (annotation,) = converted_rows(config, tmp_path)
        assert prepared.source.class_names == ("background", "a", "b")
        np.testing.assert_allclose(annotation, [[y1, x1, y2, x2, c] for x1, y1, x2, y2, c
                                                in BOXES], atol=1e-4)
        normalised = annotation / np.array([HEIGHT, WIDTH, HEIGHT, WIDTH, 1], np.float32)
        targets[name] = coder.encode_targets(normalised)
    for got, want in zip(targets["yolo"], targets["coco"]):
        np.testing.assert_allclose(got, want, atol=1e-4)
    train = read_source(yolo_config(root), "train")
    assert [os.path.basename(r.path) for r in train.records] == ["train_img.jpg"]
    truth = json.load(open(prepare_split_truth(root, tmp_path)))
    assert [c["name"] for c in truth["categories"]] == ["a", "b"]


def prepare_split_truth(root, tmp_path):
    from src.data.sources import prepare_split

    config = yolo_config(root, mindrecord_dir=str(tmp_path / "mr-truth"))
    return prepare_split(config, "eval", str(tmp_path / "truth"), progress=False,
                         log=lambda m: None).ground_truth


def test_every_faulty_line_is_named_with_its_file_and_line(tmp_path):
    """Wrong column counts, text, classes outside names, values outside 0..1, boxes without
    area: one error each with file and line, the good lines kept; a label without an image is
    an error, an image without labels a warning (an image without objects)."""
    root = make_yolo(tmp_path, val_lines=[
        yolo_line(*BOXES[0]),                # line 1: good
        "0 0.5 0.5 0.2",                     # line 2: 4 values
        "1 0.5 0.5 0.2 0.2 0.3 0.3",         # line 3: a polygon
        "one 0.5 0.5 0.2 0.2",               # line 4: not a number
        "2 0.5 0.5 0.2 0.2",                 # line 5: class outside names
        "0 1.5 0.5 0.2 -0.1",                # line 6: outside 0..1, twice
        "0 0.5 0.5 0 0.2",                   # line 7: no area
        "",
        yolo_line(*BOXES[1])])               # line 9: good
    labels = os.path.join(root, "labels", "val")
    with open(os.path.join(labels, "stray.txt"), "w") as f:
        f.write("0 0.5 0.5 0.1 0.1\n")
    write_image(os.path.join(root, "images", "val", "unlabelled.png"))
    source = read_source(yolo_config(root), "eval")
    label_file = os.path.join(labels, "val_img.txt")
    errors = {(p.file, p.where): p.message for p in source.problems if p.severity == ERROR}
    assert sorted(where for file, where in errors if file == label_file) == [
        f"line {n}" for n in (2, 3, 4, 5, 6, 7)]
    assert "4 values, expected 5 (class cx cy w h)" in errors[label_file, "line 2"]
    assert "segmentation polygon" in errors[label_file, "line 3"]
    assert "'one' is not a number" in errors[label_file, "line 4"]
    assert "class 2 is outside 0..1" in errors[label_file, "line 5"]
    assert "cx 1.5 is outside 0..1" in errors[label_file, "line 6"]
    assert "h -0.1 is outside 0..1" in errors[label_file, "line 6"]
    assert "without area" in errors[label_file, "line 7"]
    stray = os.path.join(labels, "stray.txt")
    assert "a label file without an image" in errors[stray, ""]
    warnings = [p for p in source.problems if p.severity == WARNING]
    assert len(warnings) == 1 and "unlabelled.png is taken as one without objects" in \
        warnings[0].message and warnings[0].file == os.path.join(labels, "unlabelled.txt")
    by_name = {os.path.basename(r.path): r for r in source.records}
    assert sorted(by_name) == ["unlabelled.png", "val_img.jpg"]
    assert by_name["val_img.jpg"].labels.tolist() == [1, 2]
    assert len(by_name["unlabelled.png"].labels) == 0


def test_data_yaml_faults_are_refused_naming_the_file_and_key(tmp_path):
    root = make_yolo(tmp_path / "a", data={"nc": 3})
    with pytest.raises(DatasetError, match=r"data.yaml: 'nc' is 3 but 'names' has 2 classes"):
        read_source(yolo_config(root), "train")
    root = make_yolo(tmp_path / "b", data={"val": "images/missing"})
    with pytest.raises(DatasetError, match=r"'val' names images/missing, which is not there"):
        read_source(yolo_config(root), "eval")
    root = make_yolo(tmp_path / "c", names=("a", "b"), data={"names": {0: "a", 2: "c"}})
    with pytest.raises(DatasetError, match=r"'names' numbers the classes \[0, 2\]"):
        read_source(yolo_config(root), "train")
    with pytest.raises(DatasetError, match=r"no data.yaml or data.yml in this folder"):
        read_source(yolo_config(tmp_path), "train")
    mapping = make_yolo(tmp_path / "d", data={"names": {0: "a", 1: "b"}, "nc": 2})
    assert read_source(yolo_config(mapping), "train").class_names == ("background", "a", "b")


def test_check_command_reports_yolo_faults_and_fails(tmp_path):
    root = make_yolo(tmp_path, train_lines=[yolo_line(*BOXES[0]), "0 0.5 0.5 0.2"])
    result = subprocess.run([sys.executable, "-m", "src.data.check", "--dataset", "yolo",
                             "--data_url", root, "--split", "train"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Dataset check" in result.stdout and "per class: a 1" in result.stdout
    assert "train_img.txt (line 2)" in result.stdout and "4 values, expected 5" in result.stdout
