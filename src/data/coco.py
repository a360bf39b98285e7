"""COCO-format reader: ``ROOT/annotations/instances_<split>.json`` + ``ROOT/<split>/<file_name>``.

Class indices come from the file's own categories, sorted by id: index i (1..K) stands for the
i-th category, and ``DatasetSource.category_ids`` maps it back (COCO's 80 ids among 1..90).
Boxes stay float pixels. Crowd boxes and boxes without area after clipping to the image are not
used as training targets; both are counted in ``stats``.
"""
import json
import os

import numpy as np

from src.data.records import DatasetError, DatasetSource, ImageRecord


def annotation_path(root, split, instances_pattern="annotations/instances_{}.json"):
    return os.path.join(root, instances_pattern.format(split))


def read_coco(root, split, instances_pattern="annotations/instances_{}.json",
              keep_empty=True):
    """Read one split of a COCO-layout dataset into ImageRecords (file order of ``images``).

    Args:
        root: dataset root folder.
        split: e.g. 'train2017'; images are looked up in ``root/split``.
        instances_pattern: annotation file relative to root, ``{}`` replaced by the split.
        keep_empty: keep images without usable boxes (as negatives); otherwise drop and count.
    """
    path = annotation_path(root, split, instances_pattern)
    if not os.path.isfile(path):
        raise DatasetError(f"COCO annotation file not found: {path} (expected the layout "
                           f"ROOT/{instances_pattern.format(split)} with ROOT/{split}/ images)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read as json: {exc}") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing the list '{key}' of a COCO instances file")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if not categories:
        raise DatasetError(f"{path}: 'categories' is empty")
    index_of_category = {c["id"]: i + 1 for i, c in enumerate(categories)}
    image_dir = os.path.join(root, split)

    boxes_of = {}
    stats = {"crowd_boxes": 0, "degenerate_boxes": 0, "empty_images": 0, "missing_images": 0}
    sizes = {}
    for k, image in enumerate(data["images"]):
        try:
            sizes[image["id"]] = (int(image["height"]), int(image["width"]), image["file_name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: images[{k}] lacks a valid {exc}") from exc
    for k, ann in enumerate(data["annotations"]):
        try:
            image_id, category, (x, y, w, h) = ann["image_id"], ann["category_id"], ann["bbox"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: annotations[{k}] (id {ann.get('id')}) lacks a valid "
                               f"{exc}") from exc
        if image_id not in sizes:
            raise DatasetError(f"{path}: annotations[{k}] (id {ann.get('id')}) refers to "
                               f"image_id {image_id}, which is not in 'images'")
        if category not in index_of_category:
            raise DatasetError(f"{path}: annotations[{k}] (id {ann.get('id')}) has category_id "
                               f"{category}, which is not in 'categories'")
        if ann.get("iscrowd", 0):
            stats["crowd_boxes"] += 1
            continue
        height, width, _ = sizes[image_id]
        ymin, xmin = max(float(y), 0.0), max(float(x), 0.0)
        ymax, xmax = min(float(y) + float(h), height), min(float(x) + float(w), width)
        if ymax <= ymin or xmax <= xmin:
            stats["degenerate_boxes"] += 1
            continue
        boxes_of.setdefault(image_id, []).append((ymin, xmin, ymax, xmax,
                                                  index_of_category[category]))

    records, missing = [], []
    for image_id, (height, width, file_name) in sizes.items():
        rows = np.array(boxes_of.get(image_id, []), np.float32).reshape(-1, 5)
        if len(rows) == 0:
            stats["empty_images"] += 1
            if not keep_empty:
                continue
        image_path = os.path.join(image_dir, file_name)
        if not os.path.isfile(image_path):
            missing.append(image_path)
            continue
        records.append(ImageRecord(int(image_id), image_path, height, width,
                                   rows[:, :4].copy(), rows[:, 4].astype(np.int32)))
    if missing:
        shown = "\n  ".join(missing[:10])
        raise DatasetError(f"{path}: {len(missing)} image file(s) listed there do not exist, "
                           f"e.g.\n  {shown}")
    stats["images"] = len(records)
    stats["boxes"] = int(sum(len(r.labels) for r in records))
    names = ("background",) + tuple(c["name"] for c in categories)
    ids = (0,) + tuple(int(c["id"]) for c in categories)
    return DatasetSource(records, names, ids, annotation_file=path, stats=stats)
