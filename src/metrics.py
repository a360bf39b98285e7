"""COCO mAP with pycocotools' COCOeval (never a hand-written mAP)."""
import contextlib
import io
import json
import os

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def load_coco_ground_truth(annotation_file):
    """pycocotools COCO object, without its chatter on stdout."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotation_file)


def coco_evaluate(ground_truth, detections, img_ids, detections_path=None):
    """Score detections with COCOeval (bbox) on the given images.

    Args:
        ground_truth: a pycocotools COCO object or the path of its json.
        detections: list of COCO result dicts (image_id, category_id, bbox, score).
        img_ids: images evaluated (all of them count, also those without detections).
        detections_path: where to write the detections json (written even when empty).

    Returns:
        (stats (12,) float array, summary text: COCOeval's 12 lines). With no detections at
        all, stats are zeros and the summary says so (COCO.loadRes cannot take an empty list).
    """
    from pycocotools.cocoeval import COCOeval

    if isinstance(ground_truth, str):
        ground_truth = load_coco_ground_truth(ground_truth)
    if detections_path:
        os.makedirs(os.path.dirname(os.path.abspath(detections_path)), exist_ok=True)
        tmp = f"{detections_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(detections, f)
        os.replace(tmp, detections_path)
    if not detections:
        return np.zeros(len(STAT_NAMES)), "No detections above the score threshold: mAP is 0.\n"
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
    return np.asarray(evaluator.stats, np.float64), summary


def stats_dict(stats):
    return {name: float(value) for name, value in zip(STAT_NAMES, stats)}
