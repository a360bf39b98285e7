"""COCOeval wrapper: perfect detections score 1.0, none score 0 without crashing; the default
evaluator (ultrafast-pycocotools) and category groups give pycocotools' own numbers."""
import contextlib
import io
import json
import os

import numpy as np
import pytest

from src.detection_store import DetectionStore
from src.metrics import (
    COCO_LIBRARIES,
    category_groups,
    coco_evaluate,
    load_coco_ground_truth,
    per_class_table,
    reference_protocol_images,
)


def store_of(records, category_ids, image_ids=()):
    """A DetectionStore of COCO result records (category ids -> class indices 1..)."""
    store = DetectionStore([0, *category_ids])
    index = {c: k + 1 for k, c in enumerate(category_ids)}
    by_image = {i: [] for i in image_ids}
    for record in records:
        by_image.setdefault(record["image_id"], []).append(record)
    for img_id, found in by_image.items():
        store.add(img_id, np.reshape([r["bbox"] for r in found], (-1, 4)),
                  [r["score"] for r in found], [index[r["category_id"]] for r in found])
    return store


def ground_truth_detections(annotation_file):
    data = json.load(open(annotation_file))
    return data, [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                   "score": 1.0} for a in data["annotations"]]


@pytest.mark.parametrize("library", COCO_LIBRARIES)
def test_perfect_detections_score_one(demo_root, tmp_path, library):
    path = os.path.join(demo_root, "annotations", "instances_val2017.json")
    data, detections = ground_truth_detections(path)
    out = tmp_path / "det.json"
    store = store_of(detections, [c["id"] for c in data["categories"]])
    result = coco_evaluate(path, store, [i["id"] for i in data["images"]], str(out), library)
    assert result.stats[0] == 1.0 and result.stats[1] == 1.0
    assert result.summary.count("Average Precision") == 6
    assert result.summary.count("Average Recall") == 6
    written = json.load(open(out))
    assert sorted(written, key=json.dumps) == sorted(
        [{**d, "bbox": [float(v) for v in d["bbox"]]} for d in detections], key=json.dumps)
    assert {v["name"]: v["AP"] for v in result.per_class.values()} == {
        "circle": 1.0, "square": 1.0, "triangle": 1.0}
    assert np.nanmin(result.precision50[1]) == 1.0
    table = per_class_table(result)
    assert "circle" in table and "1.000" in table


def test_no_detections_is_zero(demo_root, tmp_path):
    path = os.path.join(demo_root, "annotations", "instances_val2017.json")
    result = coco_evaluate(path, DetectionStore([0, 1]), [1], str(tmp_path / "d.json"))
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


def synthetic_case(tmp_path, seed, images=12, categories=(3, 7, 11, 40), per_image=60):
    """Ground truth of every area range, crowd boxes, an image without boxes and a category
    without ground truth; detections near the boxes and at random, ties in score included."""
    rng = np.random.default_rng(seed)
    annotations, records = [], []
    for img_id in range(1, images + 1):
        for _ in range(int(rng.integers(0 if img_id == images else 1, 9))):
            side = float(rng.choice([8.0, 50.0, 200.0])) * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, 300, 2)
            box = [round(float(x), 2), round(float(y), 2), round(side, 2),
                   round(side * rng.uniform(0.5, 2), 2)]
            annotations.append({"id": len(annotations) + 1, "image_id": img_id,
                                "category_id": int(rng.choice(categories[:-1])), "bbox": box,
                                "area": box[2] * box[3], "iscrowd": int(rng.random() < 0.1)})
            jitter = np.asarray(box) + rng.normal(0, 3, 4)
            records.append({"image_id": img_id, "category_id": annotations[-1]["category_id"],
                            "bbox": [float(v) for v in jitter],
                            "score": float(rng.uniform(0.3, 1))})
        for _ in range(per_image):
            x, y, w, h = rng.uniform(0, 300, 2).tolist() + rng.uniform(2, 150, 2).tolist()
            records.append({"image_id": img_id, "category_id": int(rng.choice(categories)),
                            "bbox": [x, y, w, h],
                            "score": float(rng.choice([0.5, rng.uniform(0.1, 0.9)]))})
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 400, "width": 400}
                       for i in range(1, images + 1)],
            "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
    path = tmp_path / f"gt{seed}.json"
    path.write_text(json.dumps(data))
    return str(path), store_of(records, categories, range(1, images + 1))


def pycocotools_in_one_call(path, store):
    """What the code did before category groups and ultrafast: one pycocotools COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(path)
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(store.records()), "bbox")
        evaluator.params.imgIds = sorted(store.image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ultrafast_and_category_groups_give_pycocotools_numbers_exactly(tmp_path, seed):
    path, store = synthetic_case(tmp_path, seed)
    expected = pycocotools_in_one_call(path, store)
    assert 0 < expected.stats[0] < 1
    for library in COCO_LIBRARIES:
        for group in (None, 1, 150):       # one call; a category a call; a few a call
            result = coco_evaluate(path, store, store.image_ids, library=library,
                                   group_detections=group)
            assert result.stats.tolist() == expected.stats.tolist(), (library, group)
            for k, category in enumerate(expected.params.catIds):
                at50 = expected.eval["precision"][0, :, k, 0, -1]
                np.testing.assert_array_equal(result.precision50[category],
                                              np.where(at50 > -1, at50, np.nan))
    assert result.per_class[40]["AP"] is None        # no ground truth: '-' in the table


def test_category_groups_cover_every_category_once_and_none_is_empty():
    assert category_groups([5, 0, 3, 0, 0], 4) == [[0], [1, 2, 3, 4]]
    assert category_groups([0, 0, 2], 1) == [[0, 1, 2]]
    assert category_groups([1, 1, 1], 1) == [[0], [1], [2]]
    assert category_groups([3, 0], 10) == [[0, 1]]
