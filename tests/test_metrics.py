"""COCOeval wrapper: perfect detections score 1.0, none score 0 without crashing."""
import json
import os

import numpy as np

from src.metrics import coco_evaluate


def ground_truth_detections(annotation_file):
    data = json.load(open(annotation_file))
    return data, [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                   "score": 1.0} for a in data["annotations"]]


def test_perfect_detections_score_one(demo_root, tmp_path):
    path = os.path.join(demo_root, "annotations", "instances_val2017.json")
    data, detections = ground_truth_detections(path)
    out = tmp_path / "det.json"
    stats, summary = coco_evaluate(path, detections, [i["id"] for i in data["images"]], str(out))
    assert stats[0] == 1.0 and stats[1] == 1.0
    assert summary.count("Average Precision") == 6 and summary.count("Average Recall") == 6
    assert json.load(open(out)) == detections


def test_no_detections_is_zero(demo_root, tmp_path):
    path = os.path.join(demo_root, "annotations", "instances_val2017.json")
    stats, summary = coco_evaluate(path, [], [1], str(tmp_path / "d.json"))
    assert not np.any(stats) and "No detections" in summary
    assert json.load(open(tmp_path / "d.json")) == []
