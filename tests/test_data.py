"""COCO reading, MindRecord sets (round trip, reuse, interrupted writes), transforms, pipelines."""
import json
import os

import numpy as np
import pytest

from src.anchors import generate_default_boxes
from src.box_coder import BoxCoder
from src.config import Config
from src.data.coco import read_coco
from src.data.mindrecord import current_set, manifest_path, write_set
from src.data.records import DatasetError, annotation_rows
from src.data.sources import prepare_split
from src.data.transforms import TrainTransform, flip_boxes, random_sample_crop


def test_coco_reader_maps_categories_and_keeps_float_boxes(demo_root):
    source = read_coco(demo_root, "train2017")
    data = json.load(open(os.path.join(demo_root, "annotations", "instances_train2017.json")))
    assert source.class_names == ("background", "circle", "square", "triangle")
    assert source.category_ids == (0, 1, 2, 3)
    assert len(source.records) == len(data["images"]) and not source.problems
    first = data["annotations"][0]
    record = next(r for r in source.records if r.img_id == first["image_id"])
    x, y, w, h = first["bbox"]
    assert [y, x, y + h, x + w] in record.boxes.tolist()
    assert record.boxes.dtype == np.float32


def read_back(files):
    import mindspore.dataset as ds

    rows = ds.MindDataset(files, shuffle=False).create_dict_iterator(output_numpy=True)
    return {int(r["img_id"][0]): r for r in rows}


def demo_config(demo_root, directory, **changes):
    values = {"coco_root": demo_root, "num_classes": 4, "mindrecord_dir": str(directory),
              "mindrecord_shards": 3, **changes}
    return Config(**values)


def test_mindrecord_round_trip_and_reuse(demo_root, tmp_path, graph_cpu):
    config = demo_config(demo_root, tmp_path)
    prepared = prepare_split(config, "train", str(tmp_path), progress=False, log=lambda m: None)
    assert len(prepared.files) == 3 and all(os.path.exists(f) for f in prepared.files)
    assert prepared.check["images"] == 12 and prepared.check["errors"] == 0
    rows = read_back(prepared.files)
    source = read_coco(demo_root, "train2017")
    assert sorted(rows) == sorted(r.img_id for r in source.records)
    for record in source.records:
        row = rows[record.img_id]
        assert row["image"].tobytes() == open(record.path, "rb").read()
        np.testing.assert_array_equal(annotation_rows(row["annotation"]), record.annotation())
    stamp = os.path.getmtime(prepared.files[0])
    messages = []
    again = prepare_split(config, "train", str(tmp_path), progress=False, log=messages.append)
    assert again.files == prepared.files and "Reusing" in messages[0]
    assert os.path.getmtime(prepared.files[0]) == stamp


def test_every_shard_holds_records(demo_root, tmp_path, graph_cpu):
    """12 images in 8 shards: none left empty (MindSpore warns about every empty shard it
    reads, a warning the user can do nothing about)."""
    import mindspore.dataset as ds

    config = demo_config(demo_root, tmp_path, mindrecord_shards=8)
    prepared = prepare_split(config, "train", str(tmp_path), progress=False, log=lambda m: None)
    sizes = [ds.MindDataset([f]).get_dataset_size() for f in prepared.files]
    assert len(sizes) == 8 and sum(sizes) == 12 and min(sizes) >= 1, sizes


def test_incomplete_outdated_or_resized_sets_are_rewritten(demo_root, tmp_path, graph_cpu):
    config = demo_config(demo_root, tmp_path, mindrecord_shards=2)
    quiet = {"progress": False, "log": lambda m: None}
    prepared = prepare_split(config, "train", str(tmp_path), **quiet)
    prefix = "ssd.mindrecord"
    manifest = json.load(open(manifest_path(str(tmp_path), prefix)))
    description = {k: v for k, v in manifest["description"].items() if k != "format_version"}
    assert current_set(str(tmp_path), prefix, description)
    os.remove(manifest_path(str(tmp_path), prefix))           # an interrupted conversion
    assert current_set(str(tmp_path), prefix, description) is None
    messages = []
    prepare_split(config, "train", str(tmp_path), progress=False, log=messages.append)
    assert any("Writing" in m for m in messages)
    with open(prepared.files[1], "ab") as f:                   # a damaged shard
        f.write(b"extra")
    assert current_set(str(tmp_path), prefix, description) is None
    messages = []
    prepare_split(config.replace(skip_empty_images=True), "train", str(tmp_path),
                  progress=False, log=messages.append)         # other settings
    assert any("Writing" in m for m in messages)
    annotation = os.path.join(demo_root, "annotations", "instances_train2017.json")
    os.utime(annotation)                                       # a changed source
    messages = []
    prepare_split(config, "train", str(tmp_path), progress=False, log=messages.append)
    assert any("Writing" in m for m in messages)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".") and "lock" not in n]


def test_failed_conversion_leaves_no_set(demo_root, tmp_path, graph_cpu):
    source = read_coco(demo_root, "train2017")
    source.records[3].path = str(tmp_path / "vanished.jpg")
    with pytest.raises(DatasetError, match="vanished.jpg"):
        write_set(source.records, str(tmp_path), "x", 2, {"inputs": {}}, progress=False)
    assert os.listdir(tmp_path) == []


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
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    gt = np.array([[10, 10, 200, 300, 2]], np.float32)
    out, loc, label, num, img_id = transform(image, gt, np.array([7]))
    assert out.shape == (300, 300, 3) and out.dtype == np.uint8 and img_id.tolist() == [7]
    assert loc.shape == (8732, 4) and label.shape == (8732,) and num[0] == (label > 0).sum() > 0
    out, loc, label, num, _ = transform(image, np.array(0, np.float32), np.array([8]))
    assert num[0] == 0 and not label.any()


def test_train_transform_draws_depend_on_seed_epoch_and_image_only():
    coder = BoxCoder(generate_default_boxes())
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    gt = np.array([[10, 10, 200, 300, 2]], np.float32)

    def outputs(seed, epoch, img_id):
        return [transform_output.tobytes() for transform_output in
                TrainTransform(coder, seed=seed, epoch=epoch)(image, gt, np.array([img_id]))[:3]]

    assert outputs(1, 2, 3) == outputs(1, 2, 3)
    variants = [outputs(1, e, i) for e in range(4) for i in range(4)]
    assert len({tuple(v) for v in variants}) > 8


def test_pipelines_batch_shapes(demo_root, tmp_path, graph_cpu):
    from src.data.pipeline import create_eval_dataset, create_train_dataset

    config = demo_config(demo_root, tmp_path, mindrecord_shards=2)
    quiet = {"progress": False, "log": lambda m: None}
    files = prepare_split(config, "train", str(tmp_path), **quiet).files
    data = create_train_dataset(files, BoxCoder(generate_default_boxes()), 4)
    batch = next(data.create_dict_iterator(output_numpy=True, num_epochs=1))
    assert batch["image"].shape == (4, 3, 300, 300) and batch["image"].dtype == np.float32
    assert batch["box"].shape == (4, 8732, 4) and batch["label"].shape == (4, 8732)
    assert batch["num_match"].shape == (4, 1) and batch["img_id"].shape == (4, 1)
    assert np.array_equal(batch["num_match"][:, 0], (batch["label"] > 0).sum(1))
    assert -3 < batch["image"].mean() < 3
    files = prepare_split(config, "eval", str(tmp_path), **quiet).files
    batches = list(create_eval_dataset(files, 3).create_dict_iterator(output_numpy=True,
                                                                       num_epochs=1))
    assert [len(b["img_id"]) for b in batches] == [3, 1]
    source = read_coco(demo_root, "val2017")
    shapes = {r.img_id: (r.height, r.width) for r in source.records}
    for b in batches:
        for img_id, shape in zip(b["img_id"].ravel(), b["image_shape"]):
            assert tuple(shape) == shapes[int(img_id)]


def test_an_epoch_replays_exactly_also_from_its_middle(demo_root, tmp_path, graph_cpu):
    import hashlib

    from src.data.pipeline import create_train_dataset

    config = demo_config(demo_root, tmp_path, mindrecord_shards=2)
    files = prepare_split(config, "train", str(tmp_path), progress=False,
                          log=lambda m: None).files
    coder = BoxCoder(generate_default_boxes())

    def batches(epoch, skip=0):
        data = create_train_dataset(files, coder, 2, seed=5, epoch=epoch)
        if skip:
            data = data.skip(skip)
        return [(b[4].ravel().tolist(), hashlib.md5(b[0].tobytes() + b[1].tobytes()).hexdigest())
                for b in data.create_tuple_iterator(num_epochs=1, output_numpy=True)]

    first = batches(3)
    assert len(first) == 6 and first == batches(3)
    assert batches(3, skip=2) == first[2:]
    assert batches(4) != first


def per_epoch_batches(files, coder, batch_size, seed, epoch, num_shards=1, shard_id=0):
    """Epoch ``epoch`` as one MindSpore pipeline of its own gives it: a MindDataset shuffled
    with the dataset seed seed * 100003 + epoch, decoded, augmented with the epoch's draws,
    normalised, batched. (img_ids, md5 of images and box offsets) per batch."""
    import hashlib

    import mindspore.dataset as ds
    from mindspore.dataset import vision

    from src.data.transforms import MEAN_RGB, STD_RGB

    ds.config.set_seed(seed * 100003 + epoch)
    sharding = {"num_shards": num_shards, "shard_id": shard_id} if num_shards > 1 else {}
    data = ds.MindDataset(files, columns_list=["img_id", "image", "annotation"], shuffle=True,
                          **sharding)
    data = data.map(operations=vision.Decode(), input_columns=["image"])
    data = data.map(operations=TrainTransform(coder, seed=seed, epoch=epoch),
                    input_columns=["image", "annotation", "img_id"],
                    output_columns=["image", "box", "label", "num_match", "img_id"])
    data = data.map(operations=[vision.Normalize(mean=MEAN_RGB, std=STD_RGB),
                                vision.HWC2CHW()], input_columns=["image"])
    data = data.batch(batch_size, drop_remainder=True)
    return [(b[4].ravel().tolist(), hashlib.md5(b[0].tobytes() + b[1].tobytes()).hexdigest())
            for b in data.create_tuple_iterator(num_epochs=1, output_numpy=True)]


@pytest.mark.parametrize("num_shards", [1, 2])
def test_one_pipeline_for_a_run_gives_each_epochs_own_batches(demo_root, tmp_path, graph_cpu,
                                                              num_shards):
    """A run's single pipeline (3 epochs; and resumed from the middle of its second) gives,
    bit for bit, the batches of each epoch's own pipeline, on every shard."""
    import hashlib

    from src.data.pipeline import create_train_dataset

    config = demo_config(demo_root, tmp_path, mindrecord_shards=2)
    files = prepare_split(config, "train", str(tmp_path), progress=False,
                          log=lambda m: None).files
    coder = BoxCoder(generate_default_boxes())

    for shard in range(num_shards):
        def run(first_epoch, epochs, skip=0, shard=shard):
            data = create_train_dataset(files, coder, 2, seed=7, epoch=first_epoch,
                                        epochs=epochs, skip=skip, num_shards=num_shards,
                                        shard_id=shard)
            assert data.get_dataset_size() == epochs * 6 // num_shards - skip
            return [(b[4].ravel().tolist(),
                     hashlib.md5(b[0].tobytes() + b[1].tobytes()).hexdigest())
                    for b in data.create_tuple_iterator(num_epochs=1, output_numpy=True)]

        own = [per_epoch_batches(files, coder, 2, 7, epoch, num_shards, shard)
               for epoch in (1, 2, 3)]
        assert all(len(batches) == 6 // num_shards for batches in own)
        assert own[0] != own[1] != own[2]
        assert run(1, 3) == own[0] + own[1] + own[2]
        assert run(2, 2, skip=1) == own[1][1:] + own[2]


def test_worker_processes_and_uint8_images_give_the_same_batches(demo_root, tmp_path,
                                                                 graph_cpu):
    """The accelerators' feed (augmentation in worker processes, uint8 images normalised in
    the loss cell) against the CPU's (threads, float32 normalised on the host): the same
    boxes, labels and image ids, and the same loss to float32 rounding."""
    import mindspore as ms
    from mindspore import nn

    from src.data.pipeline import create_train_dataset
    from src.loss import SSDWithLossCell

    config = demo_config(demo_root, tmp_path, mindrecord_shards=2)
    files = prepare_split(config, "train", str(tmp_path), progress=False,
                          log=lambda m: None).files
    coder = BoxCoder(generate_default_boxes())

    def first_batches(**feed):
        data = create_train_dataset(files, coder, 2, seed=5, epoch=1, **feed)
        return [b for _, b in zip(range(3), data.create_tuple_iterator(num_epochs=1,
                                                                         output_numpy=True))]

    host = first_batches()
    device = first_batches(processes=True, uint8=True)
    assert device[0][0].dtype == np.uint8 and host[0][0].dtype == np.float32
    for ours, theirs in zip(device, host):
        for column in range(1, 5):
            np.testing.assert_array_equal(ours[column], theirs[column])

    class Pixels(nn.Cell):
        """loc and cls read straight from the (normalised) pixels."""

        def construct(self, image):
            flat = image.reshape(image.shape[0], -1)
            return (flat[:, :8732 * 4].reshape(-1, 8732, 4),
                    flat[:, 8732 * 4:8732 * 8].reshape(-1, 8732, 4))

    losses = {}
    for uint8, batches in ((False, host), (True, device)):
        cell = SSDWithLossCell(Pixels(), uint8_input=uint8)
        losses[uint8] = [float(cell(*(ms.Tensor(x) for x in b[:4]))[0].asnumpy())
                         for b in batches]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def test_crop_rules_disagree_when_boxes_fall_below_min_iou_but_none_far_above():
    """'reference' rejects a crop only if a box is below min_iou AND one is above
    min_iou + 0.2 (spec defect 19); 'ssd' rejects it if any box is below min_iou."""
    from src.data.transforms import crop_is_rejected

    below_none_far_above = np.array([0.2, 0.45])
    assert crop_is_rejected(below_none_far_above, 0.3, "ssd")
    assert not crop_is_rejected(below_none_far_above, 0.3, "reference")
    for overlap, rejected in (([0.35, 0.9], False), ([0.1, 0.8], True), ([0.3], False)):
        for rule in ("reference", "ssd"):
            assert crop_is_rejected(np.array(overlap), 0.3, rule) == rejected, (overlap, rule)


def _iou_with_rect(boxes, rect):
    inter = (np.clip(np.minimum(boxes[:, 2], rect[2]) - np.maximum(boxes[:, 0], rect[0]), 0, None)
             * np.clip(np.minimum(boxes[:, 3], rect[3]) - np.maximum(boxes[:, 1], rect[1]), 0,
                       None))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (areas + (rect[2] - rect[0]) * (rect[3] - rect[1]) - inter)


@pytest.mark.parametrize("rule", ["reference", "ssd"])
def test_random_crop_keeps_the_min_iou_condition_of_its_rule(rule, monkeypatch):
    """Each min IoU in turn (the sampled one fixed): every crop taken satisfies the rule over
    the boxes it touches, and keeps exactly the touching boxes whose centre lies inside.
    The crop is read back from the pixels (each pixel holds its own y, x)."""
    from src.data import transforms

    height, width = 180, 240
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([yy, xx, np.zeros_like(yy)], axis=2).astype(np.uint8)
    gt = np.array([[20, 30, 120, 150, 1], [100, 100, 170, 230, 2], [10, 150, 60, 230, 3],
                   [130, 10, 175, 60, 4]], np.float32)
    below_min_iou = 0
    for min_iou in (0.1, 0.3, 0.5, 0.7):
        monkeypatch.setattr(transforms, "CROP_MIN_IOUS", (min_iou,))
        crops = 0
        for seed in range(60):
            cropped, kept = transforms.random_sample_crop(image, gt, np.random.default_rng(seed),
                                                          rule)
            if cropped is image:
                np.testing.assert_array_equal(kept, gt)
                continue
            crops += 1
            top, left = (float(v) for v in cropped[0, 0, :2])
            rect = np.array([top, left, cropped[-1, -1, 0] + 1.0, cropped[-1, -1, 1] + 1.0])
            assert cropped.shape[:2] == (rect[2] - rect[0], rect[3] - rect[1])
            overlap = _iou_with_rect(gt[:, :4].astype(np.float64), rect)
            touching = overlap > 0
            low, high = overlap[touching].min(), overlap[touching].max()
            if rule == "ssd":
                assert low >= min_iou - 1e-6, (seed, min_iou, overlap)
            else:
                assert not (low < min_iou - 1e-6 and high > min_iou + 0.2 + 1e-6), (seed, overlap)
            centres = (gt[:, :2] + gt[:, 2:4]) / 2
            inside = np.all((rect[:2] < centres) & (centres < rect[2:]), axis=1) & touching
            assert sorted(kept[:, 4].tolist()) == sorted(gt[inside, 4].tolist())
            below_min_iou += int((overlap[inside] < min_iou).any())
        assert crops > 0, min_iou
    if rule == "ssd":
        assert below_min_iou == 0
    else:
        assert below_min_iou > 0        # the reference's rule lets such crops through


def test_an_unknown_crop_rule_is_refused():
    from src.data.transforms import TrainTransform, crop_is_rejected

    with pytest.raises(ValueError, match="crop_rule 'paper': expected one of reference, ssd"):
        TrainTransform(BoxCoder(generate_default_boxes()), crop_rule="paper")
    with pytest.raises(ValueError, match="crop rule 'paper'"):
        crop_is_rejected(np.array([0.5]), 0.3, "paper")


def test_worker_processes_run_opencv_on_one_thread(demo_root, tmp_path, monkeypatch):
    """MindSpore's worker processes (forked after this process used OpenCV's thread pool, as
    a training run's threads do) run OpenCV on one thread, and do not hang setting it: each
    row's num_match carries the worker's cv2.getNumThreads() here."""
    import cv2

    from src.data import pipeline

    class Reporting(TrainTransform):
        def __call__(self, *columns):
            *outputs, num_match, img_id = super().__call__(*columns)
            return (*outputs, np.array([cv2.getNumThreads()], np.int32), img_id)

    config = demo_config(demo_root, tmp_path, mindrecord_shards=1)
    files = prepare_split(config, "train", str(tmp_path), progress=False,
                          log=lambda m: None).files
    monkeypatch.setattr(pipeline, "TrainTransform", Reporting)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        image = np.zeros((600, 800, 3), np.uint8)
        for _ in range(5):      # the pool's threads start
            cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2HSV), (300, 300))
        data = pipeline.create_train_dataset(files, BoxCoder(generate_default_boxes()), 2,
                                             num_workers=2, processes=True)
        counts = [batch[3] for _, batch in zip(range(3), data.create_tuple_iterator(
            num_epochs=1, output_numpy=True))]
        assert len(counts) == 3 and all((count == 1).all() for count in counts), counts
    finally:
        cv2.setNumThreads(threads)
