"""COCO-format reader: ``ROOT/annotations/instances_<split>.json`` + ``ROOT/<split>/<file_name>``.

Class indices come from the file's own categories, sorted by id: index i (1..K) stands for the
i-th category, and ``DatasetSource.category_ids`` maps it back (COCO's 80 ids among 1..90).
Boxes stay float pixels. Crowd boxes become ignore regions (neither targets nor background).
Annotations that cannot be used (a negative width or height among them: a malformed box, not
one to drop) are reported as problems with their index and id; images are checked (and boxes
clipped) by ``src.data.check``.
"""
import json
import os

import numpy as np

from src.data.records import (
    ERROR,
    DatasetError,
    DatasetSource,
    ImageRecord,
    Problem,
    file_fingerprint,
)

MAX_IMAGE_ID = 2 ** 63 - 1     # MindRecord's int64 img_id


def image_id(value) -> int:
    """A COCO image id as an int; ValueError unless it is an integer in 0 .. 2^63-1 (a float
    with an integer value, as some tools write ids, is taken as that integer)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    if value < 0:
        raise ValueError(f"{value} is negative")
    if value > MAX_IMAGE_ID:
        raise ValueError(f"{value} is above 2^63-1, the largest id a MindRecord set stores")
    return value


def annotation_path(root, split, instances_pattern="annotations/instances_{}.json"):
    return os.path.join(root, instances_pattern.format(split))


def load_json(path, what):
    if not os.path.isfile(path):
        raise DatasetError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read as json: {exc}") from exc


def read_coco(root, split, instances_pattern="annotations/instances_{}.json"):
    """Read one split of a COCO-layout dataset into ImageRecords (file order of ``images``).

    Raises DatasetError when the file itself is unusable (missing, not json, no categories);
    per-image and per-annotation faults are returned as ``source.problems``.
    """
    path = annotation_path(root, split, instances_pattern)
    data = load_json(path, f"COCO annotation file (expected ROOT/{instances_pattern.format(split)} "
                           f"with images in ROOT/{split}/)")
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a json object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing the list '{key}' of a COCO instances file")
    problems = []
    categories = []
    for k, category in enumerate(data["categories"]):
        try:
            categories.append((int(category["id"]), str(category["name"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: categories[{k}] lacks a valid {exc}") from exc
    categories.sort()
    if not categories:
        raise DatasetError(f"{path}: 'categories' is empty")
    index_of_category = {cid: i + 1 for i, (cid, _) in enumerate(categories)}
    image_dir = os.path.join(root, split)

    images: dict = {}
    for k, image in enumerate(data["images"]):
        name = image.get("file_name") if isinstance(image, dict) else None
        where = f"images[{k}]" + (f" ({name})" if isinstance(name, str) else "")
        try:
            img_id = image_id(image["id"])
        except (KeyError, TypeError) as exc:
            problems.append(Problem(ERROR, path, where, f"lacks a valid {exc}"))
            continue
        except ValueError as exc:
            problems.append(Problem(ERROR, path, where, f"image id {exc} (image ids must be "
                                    "integers 0..2^63-1)"))
            continue
        try:
            if img_id in images:
                problems.append(Problem(ERROR, path, where, f"repeats image id {img_id}",
                                        images[img_id]["sample"]))
                continue
            images[img_id] = {"height": int(image.get("height", 0)),
                              "width": int(image.get("width", 0)),
                              "file_name": str(image["file_name"]), "rows": [],
                              "sample": len(images)}
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(Problem(ERROR, path, where, f"lacks a valid {exc}"))
    for k, ann in enumerate(data["annotations"]):
        where = f"annotations[{k}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
        try:
            target = ann["image_id"]
            category = int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            target = ann.get("image_id") if isinstance(ann, dict) else None
            image = images.get(target) if isinstance(target, int) else None
            problems.append(Problem(ERROR, path, where, f"lacks a valid {exc} (needs image_id, "
                                    "category_id and bbox [x, y, w, h])",
                                    image["sample"] if image else -1))
            continue
        try:
            img_id = image_id(target)
        except ValueError as exc:
            problems.append(Problem(ERROR, path, where, f"image_id {exc} (image ids must be "
                                    "integers 0..2^63-1)"))
            continue
        if img_id not in images:
            problems.append(Problem(ERROR, path, where, f"refers to image_id {img_id}, which "
                                    "is not in 'images'"))
            continue
        if category not in index_of_category:
            problems.append(Problem(ERROR, path, where, f"has category_id {category}, which is "
                                    "not in 'categories'", images[img_id]["sample"]))
            continue
        if w < 0 or h < 0:
            problems.append(Problem(ERROR, path, where, (
                f"bbox [{x:g}, {y:g}, {w:g}, {h:g}] has a negative "
                f"{' and '.join(n for n, v in (('width', w), ('height', h)) if v < 0)}: a "
                "malformed box (COCO's bbox is [x, y, width, height]; corners x1, y1, x2, y2 "
                "given?)"), images[img_id]["sample"]))
            continue
        crowd = bool(ann.get("iscrowd", 0))
        images[img_id]["rows"].append((y, x, y + h, x + w, index_of_category[category], crowd))

    records = []
    for img_id, image in images.items():
        rows = np.array([r[:5] for r in image["rows"]], np.float32).reshape(-1, 5)
        record = ImageRecord(img_id, os.path.join(image_dir, image["file_name"]),
                             image["height"], image["width"], rows[:, :4], rows[:, 4],
                             [r[5] for r in image["rows"]], file_name=image["file_name"])
        records.append(record)
    names = ("background",) + tuple(name for _, name in categories)
    ids = (0,) + tuple(cid for cid, _ in categories)
    return DatasetSource(records, names, ids, annotation_file=path, problems=problems,
                         fingerprint={"annotations": file_fingerprint(path)},
                         name=f"COCO {split}")
