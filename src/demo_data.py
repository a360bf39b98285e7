"""Deterministic synthetic object-detection data set in the COCO 2017 layout.

Usage::

    python -m src.demo_data --out DIR --num_train N --num_val M --seed S

writes::

    DIR/train2017/000000000001.jpg ...
    DIR/val2017/0000000000NN.jpg ...
    DIR/annotations/instances_train2017.json
    DIR/annotations/instances_val2017.json

Each image shows 1 to ``max_objects`` filled, coloured shapes (``CLASS_NAMES``) on a textured
background; a fraction ``empty_fraction`` of the train images shows none. Train image ids are
``1..N`` and val ids ``N+1..N+M``, so the two splits never collide.

Conventions:

* Images are ``uint8`` arrays of shape ``(height, width, 3)`` in OpenCV's BGR order.
* Pixel ``(row, col)`` covers the continuous square ``[col, col + 1) x [row, row + 1)``.
* ``bbox`` is COCO's ``[x, y, w, h]`` in float pixels: the tight box of the shape's own drawn
  pixels before any occlusion, ``x = min col``, ``y = min row``, ``w = max col - min col + 1``,
  ``h = max row - min row + 1``.
* ``area`` is the number of drawn pixels of the shape (before occlusion).
* ``segmentation`` is one polygon ``[x1, y1, x2, y2, ...]`` of the shape's geometric outline in
  continuous coordinates (drawing vertex + 0.5).

Every image is rendered from ``numpy.random.default_rng([seed, split_index, image_index])``, so
the output depends only on the arguments, never on generation order.

Ownership of ``DIR``: the generator writes ``DIR/.ssd_demo_data.json`` (``MARKER_NAME``), which
lists every file it wrote (paths relative to ``DIR``, ``/``-separated), and it only ever
replaces or deletes files that list names. ``DIR`` may be:

* missing or empty (no files in it, at any depth): it is created / filled;
* a folder with the marker: its listed files are replaced, listed files the new set does not
  need are deleted, everything else is left alone; a file the new set needs that the marker
  does not list (someone else's) stops the run before anything is changed;
* a folder without the marker written by an older version of this module: accepted (and
  marked) only if every file in it is one of the demo's names (``annotations/instances_
  {train2017,val2017}.json``, ``{train2017,val2017}/<12 digits>.jpg``), both annotation files
  are there and carry the demo's ``info`` (``description`` "Synthetic shapes detection data
  (<split>, seed <n>), src.demo_data", ``contributor`` "src.demo_data") and categories, and
  every image is one its split's annotation file lists;
* anything else (a real COCO folder, a folder with other files): refused with a ``ValueError``
  naming the folder and the first file that does not belong; nothing is touched.

The marker is written before the first image (listing the old and the new files, ``complete``
false) and again at the end (the new files only, ``complete`` true), so an interrupted run
leaves a folder the next run still recognises as its own.
"""
import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from src.boxes import iou, xywh_to_yxyx
from src.files import write_json

CLASS_NAMES = ("circle", "square", "triangle")
SPLITS = ("train2017", "val2017")
SUPERCATEGORY = "shape"

DEFAULT_OPTIONS = {
    "min_size": 320,
    "max_size": 640,
    "max_objects": 6,
    "empty_fraction": 0.05,
    "quality": 90,
    "image_size": None,
    "min_shape_fraction": 0.1,
}

MIN_SHAPE_SIZE = 24
# Shapes are at least this fraction of the shorter image side: SSD300's default boxes start at
# scale 0.2, and much smaller objects seldom reach IoU 0.5 with any of them.
MIN_SHAPE_FRACTION = 0.1
MAX_SHAPE_FRACTION = 0.6
MAX_BOX_IOU = 0.3
MIN_VISIBLE_FRACTION = 0.6
MIN_COLOR_DISTANCE = 100.0
MASK_ALPHA_FLOOR = 64
PLACEMENT_ATTEMPTS = 40
DRAW_SHIFT = 4
ELLIPSE_VERTICES = 64
IMAGE_FILE_PATTERN = re.compile(r"^\d{12}\.jpg$")
MARKER_NAME = ".ssd_demo_data.json"
MARKER_WRITER = "src.demo_data"
DESCRIPTION_PATTERN = re.compile(
    r"^Synthetic shapes detection data \((?P<split>\w+), seed \d+\), src\.demo_data$")


@dataclass
class ShapeObject:
    """One drawn shape.

    ``mask`` is the shape's own coverage (``uint8``, 0 = not drawn, 64..255 = blend weight),
    full image size, before occlusion; ``visible`` is the boolean part not covered by later shapes.
    ``bbox`` follows the module's COCO convention; ``polygon`` is the flat continuous outline.
    """

    category_id: int
    color: tuple
    polygon: list
    mask: np.ndarray
    bbox: list
    area: float
    visible: Optional[np.ndarray] = field(repr=False, default=None)


@dataclass
class Sample:
    """A rendered image: ``background`` is the texture alone, ``image`` adds the shapes."""

    image: np.ndarray
    background: np.ndarray
    objects: list


def category_list():
    """COCO ``categories`` entries: ids 1.. in ``CLASS_NAMES`` order."""
    return [{"id": i + 1, "name": name, "supercategory": SUPERCATEGORY}
            for i, name in enumerate(CLASS_NAMES)]


def image_file_name(image_id):
    """COCO's 12-digit zero-padded file name for ``image_id``."""
    return f"{image_id:012d}.jpg"


def make_background(rng, width, height):
    """Smooth colour gradient + low-frequency blobs + faint lines + pixel noise, ``uint8`` BGR."""
    corners = rng.uniform(70, 190, size=(2, 2, 3)).astype(np.float32)
    image = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    grid = rng.normal(0.0, 18.0, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
    image += cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    lines = np.zeros((height, width, 3), np.float32)
    for _ in range(int(rng.integers(3, 9))):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        shade = float(rng.uniform(-25, 25))
        cv2.line(lines, p1, p2, (shade, shade, shade), int(rng.integers(1, 4)), cv2.LINE_AA)
    image += lines
    image += rng.integers(-9, 10, size=(height, width, 3), dtype=np.int8)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def sample_shape_size(rng, width, height, min_fraction=MIN_SHAPE_FRACTION):
    """Nominal longest side of a shape, log-uniform in ``[min_fraction, 0.6] *
    min(width, height)`` (at least 24 pixels)."""
    side = min(width, height)
    lower = max(MIN_SHAPE_SIZE, min_fraction * side)
    upper = max(lower, MAX_SHAPE_FRACTION * side)
    return float(np.exp(rng.uniform(np.log(lower), np.log(upper))))


def ellipse_outline(rng, size):
    """Ellipse (aspect in [0.7, 1.4], random angle) around the origin; returns (vertices,
    radius)."""
    ratio = rng.uniform(0.7, 1.4)
    semi_x, semi_y = (size / 2, size / (2 * ratio)) if ratio >= 1 else (size * ratio / 2, size / 2)
    t = np.linspace(0.0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    return (
        rotate(np.stack([semi_x * np.cos(t), semi_y * np.sin(t)], 1), rng.uniform(0, np.pi)),
        size / 2,
    )


def square_outline(rng, size):
    """Square (half the time) or rectangle with aspect in [0.6, 1.6], tilted by up to 20 degrees."""
    aspect = 1.0 if rng.random() < 0.5 else rng.uniform(0.6, 1.6)
    w, h = (size, size / aspect) if aspect >= 1 else (size * aspect, size)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    tilt = np.deg2rad(rng.uniform(-20, 20)) if rng.random() < 0.5 else 0.0
    return rotate(corners, tilt), float(np.hypot(w, h) / 2)


def triangle_outline(rng, size):
    """Upright equilateral triangle, or a randomly rotated and jittered one."""
    radius = size / 2
    if rng.random() < 0.4:
        angles = -np.pi / 2 + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        radii = np.full(3, radius)
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        angles += rng.uniform(-np.pi / 6, np.pi / 6, size=3) * np.array([0.0, 1.0, 1.0])
        radii = radius * rng.uniform(0.8, 1.0, size=3)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1), radius


OUTLINES = (ellipse_outline, square_outline, triangle_outline)


def rotate(points, angle):
    """Rotate ``(n, 2)`` points by ``angle`` radians about the origin."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def propose_polygon(rng, category_id, width, height, min_fraction=MIN_SHAPE_FRACTION):
    """Random outline of class ``category_id`` placed fully inside the image (drawing coords)."""
    outline, radius = OUTLINES[category_id - 1](
        rng, sample_shape_size(rng, width, height, min_fraction))
    margin = radius + 1.0
    center = np.array([rng.uniform(margin, max(margin, width - 1 - margin)),
                       rng.uniform(margin, max(margin, height - 1 - margin))])
    return outline + center


def rasterize(polygon, width, height):
    """Anti-aliased coverage mask of ``polygon``; weights below ``MASK_ALPHA_FLOOR`` are dropped."""
    mask = np.zeros((height, width), np.uint8)
    fixed = np.rint(polygon * (1 << DRAW_SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [fixed], (255,), cv2.LINE_AA, shift=DRAW_SHIFT)
    mask[mask < MASK_ALPHA_FLOOR] = 0
    return mask


def mask_bbox(mask):
    """COCO ``[x, y, w, h]`` (floats) of the non-zero pixels of ``mask``, or None if empty."""
    x, y, w, h = cv2.boundingRect(mask)
    return [float(x), float(y), float(w), float(h)] if w > 0 and h > 0 else None


def box_slices(bbox):
    """``(rows, cols)`` slices selecting a COCO ``[x, y, w, h]`` pixel box."""
    x, y, w, h = (int(v) for v in bbox)
    return slice(y, y + h), slice(x, x + w)


def occludes_too_much(mask, bbox, objects):
    """True if drawing ``mask`` (extent ``bbox``) on top would leave an earlier object < 60%
    visible."""
    window = box_slices(bbox)
    covered = mask[window] > 0
    for obj in objects:
        hidden = np.count_nonzero(obj.visible[window] & covered)
        remaining = np.count_nonzero(obj.visible) - hidden
        if remaining < MIN_VISIBLE_FRACTION * obj.area:
            return True
    return False


def acceptable(bbox, mask, objects):
    """Placement rule: big enough, box IoU <= 0.3 with every earlier box, limited occlusion."""
    if bbox is None or min(bbox[2], bbox[3]) < MIN_SHAPE_SIZE / 2:
        return False
    if objects and iou(xywh_to_yxyx(bbox), xywh_to_yxyx([obj.bbox for obj in objects])).max() \
            > MAX_BOX_IOU:
        return False
    return not occludes_too_much(mask, bbox, objects)


def pick_color(rng, canvas, mask, bbox, objects):
    """Random BGR colour at least ``MIN_COLOR_DISTANCE`` from the canvas under ``mask`` and from
    every earlier shape it overlaps; falls back to the most distant of the tried colours."""
    window = box_slices(bbox)
    covered = mask[window] > 0
    references = [canvas[window][covered].mean(axis=0)]
    references += [np.array(obj.color, float) for obj in objects
                   if np.any(obj.visible[window] & covered)]
    best, best_distance = np.zeros(3), -1.0
    for _ in range(32):
        color = rng.integers(0, 256, size=3).astype(float)
        distance = float(min(np.linalg.norm(color - ref) for ref in references))
        if distance >= MIN_COLOR_DISTANCE:
            return tuple(int(c) for c in color)
        if distance > best_distance:
            best, best_distance = color, distance
    return tuple(int(c) for c in best)


def blend(canvas, mask, bbox, color):
    """Alpha-blend ``color`` into ``canvas`` with weight ``mask / 255``; untouched where mask is
    0."""
    window = box_slices(bbox)
    region, weights = canvas[window], mask[window]
    drawn = weights > 0
    alpha = weights[drawn].astype(np.float32)[:, None] / 255.0
    pixels = region[drawn].astype(np.float32)
    region[drawn] = np.rint(pixels * (1 - alpha) + np.array(color, np.float32) * alpha)


def polygon_to_coco(polygon, width, height):
    """Flat ``[x1, y1, ...]`` continuous-coordinate outline clipped to the image, 2 decimals."""
    shifted = polygon + 0.5
    shifted[:, 0] = np.clip(shifted[:, 0], 0, width)
    shifted[:, 1] = np.clip(shifted[:, 1], 0, height)
    return [round(float(v), 2) for v in shifted.reshape(-1)]


def place_shape(rng, canvas, objects, min_fraction=MIN_SHAPE_FRACTION):
    """Try to add one random shape to ``canvas`` (in place); returns the new object or None."""
    height, width = canvas.shape[:2]
    category_id = int(rng.integers(1, len(CLASS_NAMES) + 1))
    for _ in range(PLACEMENT_ATTEMPTS):
        polygon = propose_polygon(rng, category_id, width, height, min_fraction)
        mask = rasterize(polygon, width, height)
        bbox = mask_bbox(mask)
        if not acceptable(bbox, mask, objects):
            continue
        color = pick_color(rng, canvas, mask, bbox, objects)
        blend(canvas, mask, bbox, color)
        covered = mask > 0
        for obj in objects:
            obj.visible &= ~covered
        return ShapeObject(category_id, color, polygon_to_coco(polygon, width, height), mask, bbox,
                           float(np.count_nonzero(covered)), covered.copy())
    return None


def render_sample(seed, split_index, image_index, min_size=DEFAULT_OPTIONS["min_size"],
                  max_size=DEFAULT_OPTIONS["max_size"], max_objects=DEFAULT_OPTIONS["max_objects"],
                  empty_fraction=0.0, image_size=None, min_shape_fraction=MIN_SHAPE_FRACTION):
    """Render image ``image_index`` of split ``split_index`` (0 train, 1 val) for ``seed``.

    ``image_size`` (width, height) fixes the size; otherwise each side is drawn from
    ``[min_size, max_size]``. Shapes are at least ``min_shape_fraction`` of the shorter side.

    The image has no shapes with probability ``empty_fraction``, otherwise 1..``max_objects``
    (at least one is always placed on an empty image).
    """
    rng = np.random.default_rng([seed, split_index, image_index])
    width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    if image_size:
        width, height = (int(v) for v in image_size)
    background = make_background(rng, width, height)
    canvas = background.copy()
    objects: list = []
    empty = rng.random() < empty_fraction
    target = 0 if empty else int(rng.integers(1, max_objects + 1))
    for _ in range(target):
        obj = place_shape(rng, canvas, objects, min_shape_fraction)
        if obj is not None:
            objects.append(obj)
    return Sample(canvas, background, objects)


def encode_jpeg(image, quality):
    """JPEG bytes of a BGR ``uint8`` image (deterministic for a given OpenCV build)."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a JPEG")
    return buffer.tobytes()


def annotation_entries(objects, image_id, first_annotation_id):
    """COCO ``annotations`` entries for ``objects``; ids count up from ``first_annotation_id``."""
    return [{
        "id": first_annotation_id + k,
        "image_id": image_id,
        "category_id": obj.category_id,
        "bbox": obj.bbox,
        "area": obj.area,
        "iscrowd": 0,
        "segmentation": [obj.polygon],
    } for k, obj in enumerate(objects)]


def coco_document(images, annotations, seed, split):
    """A complete COCO instances document (``info``, ``licenses``, ``images``, ...)."""
    return {
        "info": {
            "description": f"Synthetic shapes detection data ({split}, seed {seed}), src.demo_data",
            "version": "1.0",
            "year": 2017,
            "contributor": "src.demo_data",
            "date_created": "2017-01-01 00:00:00",
        },
        "licenses": [{"id": 1, "name": "CC0 1.0",
                      "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": category_list(),
    }


def write_split(out_dir, split_index, first_image_id, count, seed, options):
    """Render and write one split's JPEGs; returns (images, annotations, empty image count).

    Writes over files of the same names without asking: ``generate`` checks ownership first."""
    split = SPLITS[split_index]
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    empty_fraction = options["empty_fraction"] if split_index == 0 else 0.0
    images: list = []
    annotations: list = []
    empty = 0
    for index in range(count):
        image_id = first_image_id + index
        sample = render_sample(seed, split_index, index, options["min_size"], options["max_size"],
                               options["max_objects"], empty_fraction, options["image_size"],
                               options["min_shape_fraction"])
        name = image_file_name(image_id)
        with open(os.path.join(image_dir, name), "wb") as f:
            f.write(encode_jpeg(sample.image, options["quality"]))
        height, width = sample.image.shape[:2]
        images.append(
            {"id": image_id, "file_name": name, "width": width, "height": height, "license": 1}
        )
        annotations += annotation_entries(sample.objects, image_id, len(annotations) + 1)
        empty += not sample.objects
    return images, annotations, empty


def validate(num_train, num_val, seed, options):
    """Raise ValueError for arguments ``generate`` cannot honour."""
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s): {sorted(unknown)}")
    checks = [
        (num_train >= 1, f"num_train must be >= 1, got {num_train}"),
        (num_val >= 1, f"num_val must be >= 1, got {num_val}"),
        (seed >= 0, f"seed must be >= 0, got {seed}"),
        (64 <= options["min_size"] <= options["max_size"] <= 4096,
         f"need 64 <= min_size <= max_size <= 4096, "
         f"got {options['min_size']}, {options['max_size']}"),
        (options["max_objects"] >= 1, f"max_objects must be >= 1, got {options['max_objects']}"),
        (0.0 <= options["empty_fraction"] <= 1.0,
         f"empty_fraction must be in [0, 1], got {options['empty_fraction']}"),
        (1 <= options["quality"] <= 100, f"quality must be in [1, 100], got {options['quality']}"),
        (MIN_SHAPE_SIZE / 4096 <= options["min_shape_fraction"] <= MAX_SHAPE_FRACTION,
         f"min_shape_fraction must be within 0.006..{MAX_SHAPE_FRACTION}, got "
         f"{options['min_shape_fraction']}"),
        (options["image_size"] is None or (len(options["image_size"]) == 2 and all(
            64 <= int(v) <= 4096 for v in options["image_size"])),
         f"image_size must be (width, height) within 64..4096, got {options['image_size']}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def annotation_file(split: str) -> str:
    """Path of ``split``'s annotation file relative to the data set folder."""
    return f"annotations/instances_{split}.json"


def is_demo_file(relative: str) -> bool:
    """True for a relative ``/``-separated path this module writes (annotation file or image)."""
    parts = relative.split("/")
    if relative in [annotation_file(split) for split in SPLITS]:
        return True
    return len(parts) == 2 and parts[0] in SPLITS and bool(IMAGE_FILE_PATTERN.match(parts[1]))


def planned_files(num_train: int, num_val: int) -> list:
    """Relative paths of every file ``generate`` writes for these counts (marker excluded)."""
    files = [annotation_file(split) for split in SPLITS]
    files += [f"{SPLITS[0]}/{image_file_name(i)}" for i in range(1, num_train + 1)]
    files += [f"{SPLITS[1]}/{image_file_name(i)}"
              for i in range(num_train + 1, num_train + num_val + 1)]
    return files


def files_under(out_dir: str) -> list:
    """Relative ``/``-separated paths of every non-folder entry under ``out_dir``, sorted."""
    found = []
    for folder, dirs, names in os.walk(out_dir):
        dirs.sort()
        base = os.path.relpath(folder, out_dir)
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            found.append(name if base == "." else f"{base}/{name}".replace(os.sep, "/"))
    return sorted(found)


def refusal(out_dir: str, reason: str) -> ValueError:
    """The ValueError for a folder that src.demo_data does not own."""
    return ValueError(
        f"--out {out_dir}: the folder is not empty and was not written by src.demo_data "
        f"({reason}); nothing was changed. Pass a new or empty folder, or delete {out_dir} "
        f"yourself if nothing in it is needed")


def read_marker(out_dir: str) -> set:
    """The set of files ``out_dir``'s marker lists; ValueError naming the marker if it is not
    one this module wrote."""
    path = os.path.join(out_dir, MARKER_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as src.demo_data's marker ({exc}); delete "
                         f"{out_dir} yourself if nothing in it is needed") from None
    files = marker.get("files") if isinstance(marker, dict) else None
    if (not isinstance(marker, dict) or marker.get("written_by") != MARKER_WRITER
            or not isinstance(files, list) or not all(isinstance(f, str) for f in files)):
        raise ValueError(f"{path}: not src.demo_data's marker (needs 'written_by': "
                         f"'{MARKER_WRITER}' and a 'files' list); delete {out_dir} yourself "
                         f"if nothing in it is needed")
    foreign = [f for f in files if not is_demo_file(f)]
    if foreign:
        raise ValueError(f"{path}: lists '{foreign[0]}', which src.demo_data never writes; "
                         f"delete {out_dir} yourself if nothing in it is needed")
    return set(files)


def legacy_demo_files(out_dir: str, files: list) -> set:
    """``files`` (all of ``out_dir``) if they are exactly a data set an older version of this
    module wrote (no marker; see the module's docstring), else a ``refusal``."""
    for relative in files:
        if not is_demo_file(relative):
            raise refusal(out_dir, f"no {MARKER_NAME}, and {relative} is not a file it writes")
    listed = {}
    for split in SPLITS:
        relative = annotation_file(split)
        if relative not in files:
            raise refusal(out_dir, f"no {MARKER_NAME}, and {relative} is missing")
        try:
            with open(os.path.join(out_dir, relative), encoding="utf-8") as f:
                document = json.load(f)
            info = document["info"]
            description = DESCRIPTION_PATTERN.match(str(info.get("description")))
            names = {image["file_name"] for image in document["images"]}
            ours = (description is not None and description["split"] == split
                    and info.get("contributor") == MARKER_WRITER
                    and document.get("categories") == category_list())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            ours, info, names = False, {}, set()
        if not ours:
            description = info.get("description") if isinstance(info, dict) else None
            raise refusal(out_dir, f"no {MARKER_NAME}, and {relative} is not the demo's "
                                   f"(info.description {description!r})")
        listed[split] = names
    for relative in files:
        split, _, name = relative.partition("/")
        if split in SPLITS and name not in listed[split]:
            raise refusal(out_dir, f"no {MARKER_NAME}, and {relative} is not listed in "
                                   f"{annotation_file(split)}")
    return set(files)


def owned_files(out_dir: str) -> set:
    """The files under ``out_dir`` that ``generate`` may replace or delete (see the module's
    docstring); raises ValueError, touching nothing, for a folder it does not own."""
    if not os.path.exists(out_dir):
        return set()
    if not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    if os.path.lexists(os.path.join(out_dir, MARKER_NAME)):
        return read_marker(out_dir)
    files = files_under(out_dir)
    return legacy_demo_files(out_dir, files) if files else set()


def write_marker(out_dir: str, files, complete: bool, seed: int, counts: tuple,
                 options: dict) -> None:
    """``out_dir``'s marker: the files this module wrote (or is writing, ``complete`` false)."""
    write_json({"written_by": MARKER_WRITER, "complete": complete, "seed": seed,
                "num_train": counts[0], "num_val": counts[1], "options": options,
                "files": sorted(files)}, os.path.join(out_dir, MARKER_NAME), indent=1)


def generate(out_dir: str, num_train: int, num_val: int, seed: int, **options) -> dict:
    """Write the data set under ``out_dir`` and return a summary dict.

    ``options``: ``min_size``/``max_size`` (image side range in pixels), ``max_objects``,
    ``empty_fraction`` (train only), ``quality`` (JPEG), ``min_shape_fraction`` (shapes' smallest
    size as a fraction of the shorter side, default 0.1), ``image_size`` ((width, height) for
    every image instead of random sides). ``out_dir`` must be missing, empty, or this
    module's own (the module's docstring): otherwise ValueError and nothing is touched. In its
    own folder the old annotation files are removed first, images are rewritten, its stale
    images deleted, and the JSON files are written last, atomically.
    """
    options = {**DEFAULT_OPTIONS, **options}
    validate(num_train, num_val, seed, options)
    owned = owned_files(out_dir)
    planned = planned_files(num_train, num_val)
    for relative in planned:
        if relative not in owned and os.path.lexists(os.path.join(out_dir, relative)):
            raise ValueError(f"--out {out_dir}: {relative} is in the way and {MARKER_NAME} does "
                             f"not list it as src.demo_data's own; nothing was changed. Move it "
                             f"away or pass another folder")
    counts = (num_train, num_val)
    os.makedirs(out_dir, exist_ok=True)
    write_marker(out_dir, owned | set(planned), False, seed, counts, options)
    ann_dir = os.path.join(out_dir, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    ann_paths = [os.path.join(ann_dir, f"instances_{split}.json") for split in SPLITS]
    for path in ann_paths:
        if os.path.exists(path):
            os.remove(path)
    summary: dict = {"out_dir": os.path.abspath(out_dir), "seed": seed, "options": options,
                     "splits": {}}
    documents = []
    for split_index, (count, first_id) in enumerate([(num_train, 1), (num_val, num_train + 1)]):
        images, annotations, empty = write_split(
            out_dir, split_index, first_id, count, seed, options
        )
        documents.append(coco_document(images, annotations, seed, SPLITS[split_index]))
        per_class = {name: sum(a["category_id"] == i + 1 for a in annotations)
                     for i, name in enumerate(CLASS_NAMES)}
        summary["splits"][SPLITS[split_index]] = {
            "images": len(images), "boxes": len(annotations), "empty_images": empty,
            "per_class": per_class,
            "image_dir": os.path.abspath(os.path.join(out_dir, SPLITS[split_index])),
            "annotation_file": os.path.abspath(ann_paths[split_index]),
        }
    for relative in sorted(owned - set(planned)):
        path = os.path.join(out_dir, relative)
        if os.path.lexists(path):
            os.remove(path)
    for document, path in zip(documents, ann_paths):
        write_json(document, path)
    write_marker(out_dir, planned, True, seed, counts, options)
    return summary


def summary_line(summary):
    """One human-readable line describing ``generate``'s result."""
    parts = []
    for split, info in summary["splits"].items():
        classes = ", ".join(f"{k}={v}" for k, v in info["per_class"].items())
        parts.append(f"{split}: {info['images']} images ({info['empty_images']} empty), "
                     f"{info['boxes']} boxes ({classes})")
    return f"demo_data: {'; '.join(parts)}; written to {summary['out_dir']}"


def bounded_int(low, high=None):
    """argparse ``type`` accepting integers in ``[low, high]``."""
    def parse(text):
        value = int(text)
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def fraction(text):
    """argparse ``type`` accepting a float in ``[0, 1]``."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def build_parser():
    """Command-line interface of ``python -m src.demo_data``."""
    p = argparse.ArgumentParser(prog="python -m src.demo_data", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (COCO 2017 layout)")
    p.add_argument("--num_train", type=bounded_int(1), required=True, help="number of train images")
    p.add_argument("--num_val", type=bounded_int(1), required=True, help="number of val images")
    p.add_argument("--seed", type=bounded_int(0), default=0, help="random seed (default 0)")
    p.add_argument("--min_size", type=bounded_int(64, 4096), default=DEFAULT_OPTIONS["min_size"],
                   help="smallest image side in pixels (default %(default)s)")
    p.add_argument("--max_size", type=bounded_int(64, 4096), default=DEFAULT_OPTIONS["max_size"],
                   help="largest image side in pixels (default %(default)s)")
    p.add_argument("--max_objects", type=bounded_int(1), default=DEFAULT_OPTIONS["max_objects"],
                   help="most shapes per image (default %(default)s)")
    p.add_argument("--empty_fraction", type=fraction, default=DEFAULT_OPTIONS["empty_fraction"],
                   help="fraction of train images without shapes (default %(default)s)")
    p.add_argument("--quality", type=bounded_int(1, 100), default=DEFAULT_OPTIONS["quality"],
                   help="JPEG quality (default %(default)s)")
    return p


def main(argv: Optional[list] = None) -> int:
    """Parse ``argv``, generate the data set and print a one-line summary; returns 0, or 1
    with ``error: <message>`` on stderr when the folder or the arguments are refused."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.min_size > args.max_size:
        parser.error(f"--min_size ({args.min_size}) must not exceed --max_size ({args.max_size})")
    def work() -> int:
        try:
            summary = generate(args.out, args.num_train, args.num_val, args.seed,
                               min_size=args.min_size, max_size=args.max_size,
                               max_objects=args.max_objects,
                               empty_fraction=args.empty_fraction, quality=args.quality)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(summary_line(summary))
        return 0

    from src.cli import run_interruptible

    return run_interruptible(
        work, "src.demo_data", f"{args.out} holds the files written so far and stays marked as "
        "this generator's (incomplete), so the same command completes it",
        mindspore=False)


if __name__ == "__main__":
    sys.exit(main())
