"""COCO reading, MindRecord sets (round trip, reuse, interrupted writes), transforms, pipelines."""
import json
import os

import numpy as np
import pytest

from src.anchors import generate_default_boxes
from src.box_coder import BoxCoder
from src.data.coco import read_coco
from src.data.mindrecord import ensure_set, existing_set, describe_source, manifest_path
from src.data.records import DatasetError, annotation_rows
from src.data.transforms import TrainTransform, flip_boxes, random_sample_crop


def test_coco_reader_maps_categories_and_keeps_float_boxes(demo_root):
    source = read_coco(demo_root, "train2017")
    data = json.load(open(os.path.join(demo_root, "annotations", "instances_train2017.json")))
    assert source.class_names == ("background", "circle", "square", "triangle")
    assert source.category_ids == (0, 1, 2, 3)
    assert len(source.records) == len(data["images"])
    first = data["annotations"][0]
    record = next(r for r in source.records if r.img_id == first["image_id"])
    x, y, w, h = first["bbox"]
    assert [y, x, y + h, x + w] in record.boxes.tolist()
    assert record.boxes.dtype == np.float32


def test_coco_reader_maps_sparse_category_ids(tmp_path):
    os.makedirs(tmp_path / "annotations")
    os.makedirs(tmp_path / "val2017")
    (tmp_path / "val2017" / "a.jpg").write_bytes(b"x")
    data = {"images": [{"id": 5, "file_name": "a.jpg", "height": 10, "width": 20}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 90, "bbox": [1, 2, 3, 4],
                             "iscrowd": 0},
                            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [0, 0, 5, 5],
                             "iscrowd": 1},
                            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [25, 0, 5, 5],
                             "iscrowd": 0}],
            "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    source = read_coco(str(tmp_path), "val2017")
    assert source.class_names == ("background", "person", "toothbrush")
    assert source.category_ids == (0, 1, 90)
    assert source.records[0].labels.tolist() == [2]
    np.testing.assert_allclose(source.records[0].boxes, [[2, 1, 6, 4]])
    assert source.stats["crowd_boxes"] == 1 and source.stats["degenerate_boxes"] == 1


def test_coco_reader_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="instances_train2017.json"):
        read_coco(str(tmp_path), "train2017")
    os.makedirs(tmp_path / "annotations")
    (tmp_path / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": [{"id": 1, "file_name": "gone.jpg", "height": 5, "width": 5}],
                    "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DatasetError, match="gone.jpg"):
        read_coco(str(tmp_path), "train2017")


def read_back(files):
    import mindspore.dataset as ds

    rows = ds.MindDataset(files, shuffle=False).create_dict_iterator(output_numpy=True)
    return {int(r["img_id"][0]): r for r in rows}


def test_mindrecord_round_trip_and_reuse(demo_root, tmp_path, graph_cpu):
    source = read_coco(demo_root, "train2017")
    files = ensure_set(source, str(tmp_path), "ssd.mindrecord", 3, progress=False)
    assert len(files) == 3 and all(os.path.exists(f) for f in files)
    rows = read_back(files)
    assert sorted(rows) == sorted(r.img_id for r in source.records)
    for record in source.records:
        row = rows[record.img_id]
        assert row["image"].tobytes() == open(record.path, "rb").read()
        np.testing.assert_array_equal(annotation_rows(row["annotation"]), record.annotation())
    stamp = os.path.getmtime(files[0])
    messages = []
    assert ensure_set(source, str(tmp_path), "ssd.mindrecord", 3, progress=False,
                      log=messages.append) == files
    assert "Reusing" in messages[0] and os.path.getmtime(files[0]) == stamp


def test_incomplete_or_changed_set_is_rewritten(demo_root, tmp_path, graph_cpu):
    source = read_coco(demo_root, "train2017")
    directory = str(tmp_path)
    files = ensure_set(source, directory, "ssd.mindrecord", 2, progress=False)
    described = describe_source(source, 2)
    os.remove(manifest_path(directory, "ssd.mindrecord"))
    assert existing_set(directory, "ssd.mindrecord", described) is None
    files = ensure_set(source, directory, "ssd.mindrecord", 2, progress=False)
    with open(files[1], "ab") as f:
        f.write(b"truncated-or-extended")
    assert existing_set(directory, "ssd.mindrecord", described) is None
    fewer = type(source)(source.records[:-1], source.class_names, source.category_ids,
                         source.annotation_file)
    assert existing_set(directory, "ssd.mindrecord", describe_source(fewer, 2)) is None
    messages = []
    ensure_set(fewer, directory, "ssd.mindrecord", 2, progress=False, log=messages.append)
    assert "Writing" in messages[0] and len(read_back(files)) == len(fewer.records)
    assert not [n for n in os.listdir(directory) if n.startswith(".")]


def test_random_crop_keeps_boxes_inside_and_centres_within():
    rng = np.random.default_rng(0)
    image = np.zeros((200, 300, 3), np.uint8)
    gt = np.array([[20, 30, 120, 150, 1], [100, 100, 190, 290, 2]], np.float32)
    for _ in range(200):
        cropped, kept = random_sample_crop(image, gt, rng)
        h, w = cropped.shape[:2]
        assert len(kept) >= 1
        assert np.all(kept[:, :2] >= 0) and np.all(kept[:, 2] <= h) and np.all(kept[:, 3] <= w)
        assert np.all(kept[:, 2] > kept[:, 0]) and np.all(kept[:, 3] > kept[:, 1])
    _, empty = random_sample_crop(image, np.zeros((0, 5), np.float32), rng)
    assert empty.shape == (0, 5)


def test_flip_boxes():
    flipped = flip_boxes(np.array([[0.1, 0.2, 0.3, 0.5, 4]], np.float32))
    np.testing.assert_allclose(flipped, [[0.1, 0.5, 0.3, 0.8, 4]])


def test_train_transform_output_and_empty_image():
    coder = BoxCoder(generate_default_boxes())
    transform = TrainTransform(coder, seed=0)
    image = np.full((240, 320, 3), 128, np.uint8)
    out, loc, label, num = transform(image, np.array([[10, 10, 200, 300, 2]], np.float32))
    assert out.shape == (300, 300, 3) and out.dtype == np.uint8
    assert loc.shape == (8732, 4) and label.shape == (8732,) and num[0] == (label > 0).sum() > 0
    out, loc, label, num = transform(image, np.array(0, np.float32))
    assert num[0] == 0 and not label.any()


def test_pipelines_batch_shapes(demo_root, tmp_path, graph_cpu):
    from src.data.pipeline import create_eval_dataset, create_train_dataset

    files = ensure_set(read_coco(demo_root, "train2017"), str(tmp_path), "t", 2, progress=False)
    data = create_train_dataset(files, BoxCoder(generate_default_boxes()), 4)
    batch = next(data.create_dict_iterator(output_numpy=True, num_epochs=1))
    assert batch["image"].shape == (4, 3, 300, 300) and batch["image"].dtype == np.float32
    assert batch["box"].shape == (4, 8732, 4) and batch["label"].shape == (4, 8732)
    assert batch["num_match"].shape == (4, 1) and batch["img_id"].shape == (4, 1)
    assert np.array_equal(batch["num_match"][:, 0], (batch["label"] > 0).sum(1))
    assert -3 < batch["image"].mean() < 3
    files = ensure_set(read_coco(demo_root, "val2017"), str(tmp_path), "v", 2, progress=False)
    batches = list(create_eval_dataset(files, 3).create_dict_iterator(output_numpy=True,
                                                                       num_epochs=1))
    assert [len(b["img_id"]) for b in batches] == [3, 1]
    source = read_coco(demo_root, "val2017")
    shapes = {r.img_id: (r.height, r.width) for r in source.records}
    for b in batches:
        for img_id, shape in zip(b["img_id"].ravel(), b["image_shape"]):
            assert tuple(shape) == shapes[int(img_id)]
