"""COCO, VOC and TXT data: the same image lands on the same targets; every fault is reported
with its file and line or record; ids round-trip; crowd/difficult boxes are ignored."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from src.anchors import generate_default_boxes
from src.box_coder import BoxCoder
from src.config import Config
from src.data.readers import read_source
from src.data.records import DatasetError, annotation_rows
from src.data.sources import prepare_split
from tests.conftest import ROOT

HEIGHT, WIDTH = 100, 200
# (x1, y1, x2, y2, class index) in continuous pixel coordinates
BOXES = [(10, 20, 60, 70, 1), (100, 5, 190, 95, 2)]
QUIET = {"progress": False, "log": lambda message: None}


def write_image(path, height=HEIGHT, width=WIDTH):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)


def make_coco(root, split="val2017", boxes=BOXES, extra_annotations=(), category_ids=(5, 9),
              images=(("img.jpg", 1),)):
    for name, _ in images:
        write_image(os.path.join(root, split, name))
    annotations = [{"id": k + 1, "image_id": 1, "category_id": category_ids[c - 1],
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0} for k, (x1, y1, x2, y2, c) in enumerate(boxes)]
    data = {"images": [{"id": i, "file_name": n, "height": HEIGHT, "width": WIDTH}
                       for n, i in images],
            "annotations": annotations + list(extra_annotations),
            "categories": [{"id": category_ids[0], "name": "a"},
                           {"id": category_ids[1], "name": "b"}]}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def voc_xml(boxes=BOXES, names=("a", "b"), difficult=(0, 0), file_name="img.jpg"):
    objects = "".join(
        f"<object><name>{names[c - 1]}</name><difficult>{d}</difficult><bndbox>"
        f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        f"</bndbox></object>" for (x1, y1, x2, y2, c), d in zip(boxes, difficult))
    return (f"<annotation><filename>{file_name}</filename><size><width>{WIDTH}</width>"
            f"<height>{HEIGHT}</height><depth>3</depth></size>{objects}</annotation>")


def make_voc(root, xml=None, split="val"):
    write_image(os.path.join(root, "JPEGImages", "img.jpg"))
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, "ImageSets", "Main"), exist_ok=True)
    with open(os.path.join(root, "Annotations", "img.xml"), "w") as f:
        f.write(xml or voc_xml())
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("img\n")


def make_txt(root, lines=None):
    write_image(os.path.join(root, "images", "img.jpg"))
    path = os.path.join(root, "anno.txt")
    boxes = " ".join(f"{x1},{y1},{x2},{y2},{c}" for x1, y1, x2, y2, c in BOXES)
    with open(path, "w") as f:
        f.write("\n".join(lines or [f"images/img.jpg {boxes}"]) + "\n")
    return path


def converted_rows(config, tmp_path, split="eval"):
    prepared = prepare_split(config, split, str(tmp_path / "out"), **QUIET)
    import mindspore.dataset as ds

    rows = list(ds.MindDataset(prepared.files, shuffle=False).create_dict_iterator(
        output_numpy=True))
    return prepared, [annotation_rows(r["annotation"]) for r in rows]


def test_one_image_in_three_formats_gives_the_same_targets(tmp_path, graph_cpu):
    make_coco(tmp_path / "coco")
    make_voc(tmp_path / "voc")
    anno = make_txt(tmp_path / "txt")
    configs = {
        "coco": Config(dataset="coco", coco_root=str(tmp_path / "coco"), num_classes=3),
        "voc": Config(dataset="voc", voc_root=str(tmp_path / "voc"), num_classes=3),
        "other": Config(dataset="other", image_dir=str(tmp_path / "txt"), anno_path=anno,
                        num_classes=3, classes=("background", "a", "b"))}
    coder = BoxCoder(generate_default_boxes())
    targets = {}
    for name, config in configs.items():
        config = config.replace(mindrecord_dir=str(tmp_path / f"mr-{name}"))
        prepared, rows = converted_rows(config, tmp_path)
        assert prepared.source.class_names == ("background", "a", "b")
        (annotation,) = rows
        expected = [[y1, x1, y2, x2, c] for x1, y1, x2, y2, c in BOXES]
        np.testing.assert_allclose(annotation, expected)
        normalised = annotation / np.array([HEIGHT, WIDTH, HEIGHT, WIDTH, 1], np.float32)
        targets[name] = coder.encode_targets(normalised)
    for name in ("voc", "other"):
        for got, want in zip(targets[name], targets["coco"]):
            np.testing.assert_array_equal(got, want)
    truth = json.load(open(prepare_split(configs["voc"].replace(
        mindrecord_dir=str(tmp_path / "mr-voc")), "eval", str(tmp_path), **QUIET).ground_truth))
    assert [a["bbox"] for a in truth["annotations"]] == [[10, 20, 50, 50], [100, 5, 90, 90]]


def test_coco_ids_round_trip_to_a_perfect_score(tmp_path):
    from src.boxes import yxyx_to_xywh
    from src.detections import PostProcessor
    from src.metrics import coco_evaluate

    path = make_coco(tmp_path, category_ids=(90, 13))       # sorted: b (13) = 1, a (90) = 2
    source = read_source(Config(coco_root=str(tmp_path), num_classes=3), "eval")
    assert source.category_ids == (0, 13, 90) and source.class_names == ("background", "b", "a")
    record = source.records[0]
    post = PostProcessor(source.category_ids)
    detections = post.new_store()
    detections.add(record.img_id, yxyx_to_xywh(record.boxes), np.ones(len(record.labels)),
                   record.labels)
    assert sorted(d["category_id"] for d in detections.records()) == [13, 90]
    assert coco_evaluate(path, detections, [record.img_id]).stats[0] == pytest.approx(1.0)


def test_crowd_and_difficult_boxes_are_ignored_not_background(tmp_path, graph_cpu):
    crowd = {"id": 9, "image_id": 1, "category_id": 5, "bbox": [120, 10, 60, 80], "iscrowd": 1}
    make_coco(tmp_path / "coco", boxes=BOXES[:1], extra_annotations=[crowd])
    config = Config(coco_root=str(tmp_path / "coco"), num_classes=3,
                    mindrecord_dir=str(tmp_path / "mr"))
    _, (rows,) = converted_rows(config, tmp_path)
    assert rows[:, 4].tolist() == [1, -1]
    coder = BoxCoder(generate_default_boxes())
    _, label, num = coder.encode_targets(rows / np.array([HEIGHT, WIDTH, HEIGHT, WIDTH, 1]))
    assert num[0] > 0 and (label == -1).sum() > 0 and set(np.unique(label)) == {-1, 0, 1}
    make_voc(tmp_path / "voc", voc_xml(difficult=(0, 1)))
    config = Config(dataset="voc", voc_root=str(tmp_path / "voc"), num_classes=3,
                    mindrecord_dir=str(tmp_path / "mr2"))
    prepared, (rows,) = converted_rows(config, tmp_path)
    assert rows[:, 4].tolist() == [1, -2]
    truth = json.load(open(prepared.ground_truth))
    assert [a["iscrowd"] for a in truth["annotations"]] == [0, 1]


def test_txt_faults_are_all_reported_with_line_numbers(tmp_path, graph_cpu):
    root = tmp_path / "txt"
    write_image(root / "images" / "ok.jpg")
    write_image(root / "images" / "truncated.jpg")
    data = open(root / "images" / "truncated.jpg", "rb").read()
    open(root / "images" / "truncated.jpg", "wb").write(data[:len(data) // 2])
    anno = make_txt(root, [
        "images/ok.jpg 10,20,60,70,1",
        "images/ok.jpg 1,2,3,4",                     # 4 numbers: malformed, and a repeat
        "images/missing.jpg 1,2,30,40,1",
        "images/truncated.jpg 1,2,30,40,1",
        "",
        "images/ok.jpg 1,2,30,40,7",                 # class out of range
    ])
    config = Config(dataset="other", image_dir=str(root), anno_path=anno, num_classes=3,
                    mindrecord_dir=str(tmp_path / "mr"))
    with pytest.raises(DatasetError) as failure:
        prepare_split(config, "train", str(tmp_path), **QUIET)
    text = str(failure.value)
    assert "line 2" in text and "4 numbers, expected 5" in text
    assert "missing.jpg" in text and "not found" in text
    assert "truncated.jpg" in text and "cannot be decoded" in text
    assert "line 6" in text and "class 7 is outside 1..2" in text
    assert "--skip_bad_samples" in text
    assert not os.path.exists(tmp_path / "mr" / "ssd.mindrecord.manifest.json")
    messages = []
    prepared = prepare_split(config.replace(skip_bad_samples=True), "train", str(tmp_path),
                             progress=False, log=messages.append)
    assert prepared.check["skipped_images"] == 4 and prepared.check["images"] == 5
    assert "4 image(s) skipped" in "\n".join(messages)


def test_voc_and_coco_faults_name_the_file(tmp_path):
    make_voc(tmp_path / "voc", "<annotation><object><name>a</name></annotation")
    source = read_source(Config(dataset="voc", voc_root=str(tmp_path / "voc"),
                                classes=("background", "a", "b"), num_classes=3), "eval")
    assert "img.xml" in str(source.problems[0]) and "not valid XML" in str(source.problems[0])
    path = make_coco(tmp_path / "coco", extra_annotations=[{"id": 7, "image_id": 1,
                                                            "category_id": 5}])
    source = read_source(Config(coco_root=str(tmp_path / "coco"), num_classes=3), "eval")
    (problem,) = source.problems
    assert problem.file == path and "annotations[2] (id 7)" in str(problem) and "bbox" in \
        str(problem)
    with pytest.raises(DatasetError, match="instances_train2017.json"):
        read_source(Config(coco_root=str(tmp_path / "coco"), num_classes=3), "train")


def test_box_outside_image_is_clipped_with_a_warning_and_empty_box_dropped(tmp_path,
                                                                         graph_cpu):
    boxes = [(10, 20, 260, 70, 1), (50, 50, 50, 90, 2)]  # runs off the right; zero width
    make_coco(tmp_path / "coco", boxes=boxes)
    config = Config(coco_root=str(tmp_path / "coco"), num_classes=3,
                    mindrecord_dir=str(tmp_path / "mr"))
    messages = []
    prepared = prepare_split(config, "eval", str(tmp_path), progress=False,
                             log=messages.append)
    report = "\n".join(messages)
    assert "clipped" in report and "dropped" in report and prepared.check["warnings"] == 2
    assert prepared.check["clipped_boxes"] == 1 and prepared.check["dropped_boxes"] == 1
    import mindspore.dataset as ds

    (row,) = ds.MindDataset(prepared.files, shuffle=False).create_dict_iterator(
        output_numpy=True)
    np.testing.assert_allclose(annotation_rows(row["annotation"]), [[20, 10, 70, 200, 1]])


def test_empty_images_are_kept_or_skipped_and_counted(tmp_path, graph_cpu):
    make_coco(tmp_path / "coco", images=(("img.jpg", 1), ("empty.jpg", 2)))
    config = Config(coco_root=str(tmp_path / "coco"), num_classes=3,
                    mindrecord_dir=str(tmp_path / "mr"))
    prepared = prepare_split(config, "eval", str(tmp_path), **QUIET)
    assert prepared.check["images"] == 2 and prepared.check["empty_images"] == 1
    prepared = prepare_split(config.replace(skip_empty_images=True), "eval", str(tmp_path),
                             **QUIET)
    assert prepared.check["skipped_images"] == 1


def test_class_count_mismatch_is_one_problem_of_the_report(tmp_path):
    make_coco(tmp_path / "coco", images=(("img.jpg", 1), ("gone.jpg", 2)))
    os.remove(tmp_path / "coco" / "val2017" / "gone.jpg")
    with pytest.raises(DatasetError) as caught:
        prepare_split(Config(coco_root=str(tmp_path / "coco"), num_classes=81), "eval",
                      str(tmp_path), **QUIET)
    report = str(caught.value)
    assert "but num_classes is 81: pass --num_classes 3" in report
    assert "gone.jpg" in report          # the other problems are reported with it


def test_class_count_is_taken_from_the_data_when_not_given(tmp_path):
    from src.data.sources import with_data_classes

    make_coco(tmp_path / "coco")
    config = Config(coco_root=str(tmp_path / "coco"), mindrecord_dir=str(tmp_path / "mr"))
    prepared = prepare_split(config, "eval", str(tmp_path), **QUIET)
    said = []
    assert with_data_classes(config, prepared.source, said.append).num_classes == 3
    assert "num_classes 3: from the data" in said[0]
    assert with_data_classes(config.replace(num_classes=3), prepared.source).num_classes == 3


def test_a_one_class_voc_set_trains_without_num_classes(tmp_path):
    """The issue's case: a one-class VOC set and no --num_classes."""
    from src.data.sources import with_data_classes

    make_voc(tmp_path / "voc", xml=voc_xml(boxes=BOXES[:1], names=("dog",), difficult=(0,)))
    config = Config(dataset="voc", voc_root=str(tmp_path / "voc"),
                    mindrecord_dir=str(tmp_path / "mr"))
    prepared = prepare_split(config, "eval", str(tmp_path), **QUIET)
    assert prepared.source.class_names == ("background", "dog")
    assert with_data_classes(config, prepared.source, lambda m: None).num_classes == 2


def test_txt_class_count_is_its_highest_class_index_when_not_given(tmp_path):
    anno = make_txt(tmp_path, ["images/img.jpg 10,20,60,70,1 100,5,190,95,5"])
    source = read_source(Config(dataset="other", image_dir=str(tmp_path), anno_path=anno),
                         "eval")
    assert source.num_classes == 6 and not source.problems
    bounded = read_source(Config(dataset="other", image_dir=str(tmp_path), anno_path=anno,
                                 num_classes=3), "eval")
    assert "class 5 is outside 1..2" in bounded.problems[0].message


def test_check_command_reports_and_fails_on_errors(tmp_path):
    anno = make_txt(tmp_path, ["images/img.jpg 10,20,60,70,1", "images/img.jpg 5,5,9"])
    result = subprocess.run([sys.executable, "-m", "src.data.check", "--dataset", "other",
                             "--image_dir", str(tmp_path), "--anno_path", anno,
                             "--num_classes", "3", "--split", "train"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Dataset check" in result.stdout and "per class: class_1 1" in result.stdout
    assert "line 2" in result.stdout and "box size" in result.stdout


def test_concurrent_processes_convert_once(demo_root, tmp_path):
    code = ("import sys; sys.path.insert(0, {root!r});"
            "from src.config import Config; from src.data.sources import prepare_split;"
            "prepare_split(Config(coco_root={data!r}, num_classes=4, mindrecord_dir={mr!r}),"
            " 'train', {mr!r}, progress=False)").format(root=ROOT, data=demo_root,
                                                         mr=str(tmp_path))
    workers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    text = "".join(out for out, _ in outputs)
    assert text.count("Writing MindRecord set") == 1 and text.count("Reusing") == 1
