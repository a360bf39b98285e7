"""The compact store of an evaluation's detections: the same records, json text and values as
COCO result dicts made with np.round, at 22 bytes a detection."""
import json
import os

import numpy as np
import pytest

from src.boxes import yxyx_to_xywh
from src.detection_store import DetectionStore


def old_records(img_id, xywh, scores, categories):
    """How records were made before the store: np.round of float64 values, per image."""
    boxes = np.round(np.asarray(xywh, np.float64), 3).tolist()
    rounded = np.round(np.asarray(scores, np.float64), 5).tolist()
    return [{"image_id": int(img_id), "category_id": int(c), "bbox": b, "score": s}
            for b, s, c in zip(boxes, rounded, categories)]


def random_images(rng, count=30):
    for img_id in range(count):
        k = int(rng.integers(0, 40)) if img_id % 7 else 0        # some images have none
        scale = float(rng.choice([1.0, 640.0, 20000.0]))
        corners = np.sort(rng.uniform(0, scale, (k, 2, 2)), axis=1).reshape(k, 4)
        scores = rng.uniform(0, 1, k).astype(rng.choice([np.float32, np.float64]))
        yield img_id * 1000 + 7, yxyx_to_xywh(corners[:, [0, 1, 2, 3]]), scores, \
            rng.integers(1, 5, k)


def test_records_and_json_text_are_those_of_np_round_dicts(tmp_path):
    rng = np.random.default_rng(0)
    category_ids = [0, 90, 3, 17, 42]
    store, expected = DetectionStore(category_ids), []
    for img_id, xywh, scores, classes in random_images(rng):
        store.add(img_id, xywh, scores, classes)
        expected += old_records(img_id, xywh, scores, np.asarray(category_ids)[classes])
    assert store.records() == expected and len(store) == len(expected)
    assert all(type(r["image_id"]) is int and type(r["bbox"][0]) is float
               for r in store.records())
    path = tmp_path / "detections.json"
    store.write_json(str(path))
    assert path.read_text() == json.dumps(expected)
    assert os.listdir(tmp_path) == ["detections.json"]
    rows = store.array()
    assert rows.shape == (len(expected), 7)
    assert rows[:, 1:5].tolist() == [r["bbox"] for r in expected]
    assert rows[:, 5].tolist() == [r["score"] for r in expected]
    assert rows[:, [0, 6]].astype(np.int64).tolist() == [
        [r["image_id"], r["category_id"]] for r in expected]
    chosen = store.records([17, 90])
    assert chosen == [r for r in expected if r["category_id"] in (17, 90)]
    counts = store.category_counts()
    assert counts == {c: sum(r["category_id"] == c for r in expected) for c in category_ids}
    assert store.nbytes == 22 * len(expected)
    assert store.image_count == 30 and 7 in store.image_ids


def test_an_empty_store_writes_an_empty_list(tmp_path):
    store = DetectionStore([0, 1])
    store.add(5, np.zeros((0, 4)), [], [])
    store.write_json(str(tmp_path / "d.json"))
    assert json.load(open(tmp_path / "d.json")) == [] and store.image_ids == [5]
    assert store.array().shape == (0, 7)


def test_ids_beyond_float64_go_as_records_only():
    store = DetectionStore([0, 1])
    store.add(2 ** 62 + 1, [[1, 2, 3, 4]], [0.5], [1])
    assert not store.fits_array and store.records()[0]["image_id"] == 2 ** 62 + 1
    with pytest.raises(ValueError, match="2\\^53"):
        store.array()


@pytest.mark.parametrize("xywh, scores, classes, message", [
    ([[0, 0, np.nan, 1]], [0.5], [1], "not a finite number"),
    ([[0, 0, 1, 1]], [np.inf], [1], "not a finite number"),
    ([[0, 0, 3e6, 1]], [0.5], [1], "beyond 2,147,483 pixels"),
    ([[0, 0, 1, 1]], [0.5], [2], "class index outside 0..1"),
    ([[0, 0, 1, 1]], [0.5, 0.4], [1], "1 boxes, 2 scores and 1 classes"),
])
def test_bad_detections_are_refused_naming_the_image(xywh, scores, classes, message):
    store = DetectionStore([0, 1])
    with pytest.raises(ValueError, match=f"image 77: .*{message}"):
        store.add(77, xywh, scores, classes)
    assert len(store) == 0 and store.image_count == 0
