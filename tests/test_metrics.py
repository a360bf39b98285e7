"""COCOeval wrapper: perfect detections score 1.0, none score 0 without crashing."""
import json
import os

import numpy as np

from src.metrics import (
    coco_evaluate,
    load_coco_ground_truth,
    per_class_table,
    reference_protocol_images,
)


def ground_truth_detections(annotation_file):
    data = json.load(open(annotation_file))
    return data, [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                   "score": 1.0} for a in data["annotations"]]


def test_perfect_detections_score_one(demo_root, tmp_path):
    path = os.path.join(demo_root, "annotations", "instances_val2017.json")
    data, detections = ground_truth_detections(path)
    out = tmp_path / "det.json"
    result = coco_evaluate(path, detections, [i["id"] for i in data["images"]], str(out))
    assert result.stats[0] == 1.0 and result.stats[1] == 1.0
    assert result.summary.count("Average Precision") == 6
    assert result.summary.count("Average Recall") == 6
    assert json.load(open(out)) == detections
    assert {v["name"]: v["AP"] for v in result.per_class.values()} == {
        "circle": 1.0, "square": 1.0, "triangle": 1.0}
    assert np.nanmin(result.precision50[1]) == 1.0
    table = per_class_table(result)
    assert "circle" in table and "1.000" in table


def test_no_detections_is_zero(demo_root, tmp_path):
    path = os.path.join(demo_root, "annotations", "instances_val2017.json")
    result = coco_evaluate(path, [], [1], str(tmp_path / "d.json"))
    assert not np.any(result.stats) and "No detections" in result.summary
    assert json.load(open(tmp_path / "d.json")) == []


def test_reference_protocol_drops_crowd_and_unannotated_images(tmp_path):
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 10, "width": 10}
                       for i in (1, 2, 3)],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5],
                             "area": 25, "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5],
                             "area": 25, "iscrowd": 1}],
            "categories": [{"id": 1, "name": "a"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    assert reference_protocol_images(load_coco_ground_truth(str(path)), [1, 2, 3]) == [1]
