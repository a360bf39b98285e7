"""COCO mAP with pycocotools' COCOeval (never a hand-written mAP)."""
import contextlib
import io
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from src.files import write_json

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoResult:
    """COCOeval's 12 numbers and summary text, AP and AP50 per category, and the
    precision/recall curve at IoU 0.5 (area all, 100 detections) per category."""

    stats: np.ndarray
    summary: str
    per_class: dict = field(default_factory=dict)
    recall: np.ndarray = None
    precision50: dict = field(default_factory=dict)


def load_coco_ground_truth(annotation_file: str):
    """pycocotools COCO object, without its chatter on stdout."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotation_file)


def reference_protocol_images(ground_truth, img_ids: list) -> list:
    """The images the reference scored (spec 9, defect 18): without any crowd annotation and
    with at least one annotation."""
    keep = []
    for img_id in img_ids:
        annotations = ground_truth.imgToAnns.get(int(img_id), [])
        if annotations and not any(a.get("iscrowd", 0) for a in annotations):
            keep.append(img_id)
    return keep


def coco_evaluate(ground_truth, detections: list, img_ids: list,
                  detections_path: Optional[str] = None) -> CocoResult:
    """Score detections with COCOeval (bbox) on the given images.

    Args:
        ground_truth: a pycocotools COCO object or the path of its json.
        detections: list of COCO result dicts (image_id, category_id, bbox, score).
        img_ids: images evaluated (all of them count, also those without detections).
        detections_path: where to write the detections json (written even when empty).

    Returns:
        CocoResult. With no detections at all, stats are zeros and the summary says so
        (COCO.loadRes cannot take an empty list).
    """
    from pycocotools.cocoeval import COCOeval

    if isinstance(ground_truth, str):
        ground_truth = load_coco_ground_truth(ground_truth)
    if detections_path:
        write_json(detections, detections_path)
    if not detections:
        return CocoResult(np.zeros(len(STAT_NAMES)),
                          "No detections above the score threshold: mAP is 0.\n")
    with contextlib.redirect_stdout(io.StringIO()):
        results = ground_truth.loadRes([dict(d) for d in detections])  # it edits its input
    evaluator = COCOeval(ground_truth, results, iouType="bbox")
    evaluator.params.imgIds = sorted(int(i) for i in img_ids)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = "\n".join(line for line in text.getvalue().splitlines()
                        if line.startswith(" Average")) + "\n"
    precision = evaluator.eval["precision"]          # [IoU, recall, category, area, maxDets]
    per_class, curves = {}, {}
    for k, category in enumerate(evaluator.params.catIds):
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
