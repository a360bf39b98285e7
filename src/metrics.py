"""COCO mAP with COCOeval: pycocotools', or ultrafast-pycocotools' (a Rust COCOeval whose
precision and recall arrays are bit-identical to pycocotools', tested in tests/test_metrics.py),
never a hand-written mAP."""
import contextlib
import io
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from src.detection_store import DetectionStore

COCO_LIBRARIES = ("ultrafast", "pycocotools")
# Detections scored in one COCOeval call (see coco_evaluate): ~100 bytes each in ultrafast,
# ~1 KB each as pycocotools' dicts.
GROUP_DETECTIONS = {"ultrafast": 4_000_000, "pycocotools": 400_000}
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoResult:
    """COCOeval's 12 numbers and summary text, AP and AP50 per category, and the
    precision/recall curve at IoU 0.5 (area all, 100 detections) per category."""

    stats: np.ndarray
    summary: str
    per_class: dict = field(default_factory=dict)
    recall: Optional[np.ndarray] = None
    precision50: dict = field(default_factory=dict)


def _library(name: str) -> tuple:
    """(COCO, COCOeval) of one of ``COCO_LIBRARIES``."""
    if name == "ultrafast":
        from ultrafast_pycocotools import COCO, COCOeval
    elif name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"COCO evaluator {name!r} is not one of {', '.join(COCO_LIBRARIES)}")
    return COCO, COCOeval


def load_coco_ground_truth(annotation_file: str, library: str = "pycocotools"):
    """The library's COCO object of an annotation file, without its chatter on stdout."""
    coco_class, _ = _library(library)
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_class(annotation_file)


def reference_protocol_images(ground_truth, img_ids: list) -> list:
    """The images the reference scored (spec 9, defect 18): without any crowd annotation and
    with at least one annotation."""
    keep = []
    for img_id in img_ids:
        annotations = ground_truth.imgToAnns.get(int(img_id), [])
        if annotations and not any(a.get("iscrowd", 0) for a in annotations):
            keep.append(img_id)
    return keep


def category_groups(counts: Sequence[int], budget: int) -> list:
    """Indices of consecutive categories cut into groups of at least ``budget`` detections
    (``counts``: detections per category); the last group takes the rest, and a rest without
    detections joins the group before it, so no group is empty unless all are."""
    groups, current, size = [], [], 0
    for index, count in enumerate(counts):
        current.append(index)
        size += count
        if size >= budget:
            groups.append(current)
            current, size = [], 0
    if current:
        if groups and size == 0:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def coco_evaluate(annotation_file: str, detections: DetectionStore, img_ids: Sequence[int],
                  detections_path: Optional[str] = None, library: str = "ultrafast",
                  group_detections: Optional[int] = None) -> CocoResult:
    """Score detections with COCOeval (bbox) on the given images.

    COCOeval scores each category on its own (matching, accumulation: nothing is shared
    between categories), so the categories are scored in consecutive groups of about
    ``group_detections`` detections (default ``GROUP_DETECTIONS[library]``) and the groups'
    precision, recall and score arrays joined before the library's own ``summarize``: the
    12 numbers are those of one call, with memory bounded by a group.

    Args:
        annotation_file: the ground-truth json.
        detections: the ``DetectionStore`` of the images.
        img_ids: images evaluated (all of them count, also those without detections).
        detections_path: where to write the detections json (written even when empty).
        library: ``ultrafast`` (ultrafast-pycocotools: bit-identical arrays, tested) or
            ``pycocotools``.

    Returns:
        CocoResult. With no detections of the ground truth's categories, stats are zeros and
        the summary says so (``COCO.loadRes`` cannot take an empty list).
    """
    _, cocoeval_class = _library(library)
    if detections_path:
        detections.write_json(detections_path)
    ground_truth = load_coco_ground_truth(annotation_file, library)
    category_ids = sorted(ground_truth.getCatIds())
    per_category = detections.category_counts()
    counts = [per_category.get(c, 0) for c in category_ids]
    if not sum(counts):
        return CocoResult(np.zeros(len(STAT_NAMES)),
                          "No detections above the score threshold: mAP is 0.\n")
    budget = group_detections or GROUP_DETECTIONS[library]
    image_ids = sorted(int(i) for i in img_ids)
    parts = []
    for group in category_groups(counts, budget):
        group_ids = [category_ids[k] for k in group]
        as_array = library == "ultrafast" and detections.fits_array
        results = detections.array(group_ids) if as_array else detections.records(group_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = cocoeval_class(ground_truth, ground_truth.loadRes(results), "bbox")
            del results
            evaluator.params.imgIds = image_ids
            evaluator.params.catIds = group_ids
            evaluator.evaluate()
            evaluator.accumulate()
        parts.append({key: evaluator.eval[key] for key in ("precision", "recall", "scores")})
        del evaluator                         # a group's memory goes before the next's
    evaluator = cocoeval_class(ground_truth, None, "bbox")
    evaluator.params.imgIds, evaluator.params.catIds = image_ids, category_ids
    evaluator.eval = {"params": evaluator.params, **{
        key: np.concatenate([part[key] for part in parts], axis=axis)
        for key, axis in (("precision", 2), ("recall", 1), ("scores", 2))}}
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        evaluator.summarize()
    summary = "\n".join(line for line in text.getvalue().splitlines()
                        if line.startswith(" Average")) + "\n"
    precision = evaluator.eval["precision"]          # [IoU, recall, category, area, maxDets]
    per_class, curves = {}, {}
    for k, category in enumerate(category_ids):
        all_ious = precision[:, :, k, 0, -1]
        at50 = precision[0, :, k, 0, -1]
        name = ground_truth.cats[category]["name"]
        per_class[category] = {
            "name": name,
            "AP": float(all_ious[all_ious > -1].mean()) if (all_ious > -1).any() else None,
            "AP50": float(at50[at50 > -1].mean()) if (at50 > -1).any() else None}
        curves[category] = np.where(at50 > -1, at50, np.nan)
    return CocoResult(np.asarray(evaluator.stats, np.float64), summary, per_class,
                      np.asarray(evaluator.params.recThrs), curves)


def per_class_table(result: CocoResult) -> str:
    """Text table of AP and AP50 per category (categories without ground truth show '-')."""
    rows = [f"{'category':<24}{'id':>5}{'AP':>8}{'AP50':>8}"]
    for category, values in sorted(result.per_class.items()):
        cells = [f"{values[k]:8.3f}" if values[k] is not None else f"{'-':>8}"
                 for k in ("AP", "AP50")]
        rows.append(f"{values['name'][:23]:<24}{category:>5}{''.join(cells)}")
    return "\n".join(rows)


def stats_dict(stats) -> dict:
    return {name: float(value) for name, value in zip(STAT_NAMES, stats)}
