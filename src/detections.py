"""The one post-processing path: decoded boxes and scores -> detections -> COCO json records.

Used by eval.py (and every later consumer of network outputs). Per image:

1. candidates: every (box, class) with score strictly above ``min_score``; class 0
   (background) is never a detection;
2. boxes scaled to the original image's pixels (normalised y-first corners times (h, w, h, w));
3. greedy NMS inside each class (a box is suppressed when its IoU with a kept, higher-scoring box
   of the same class is above ``nms_threshold``), keeping at most ``max_per_class`` boxes per
   class, optionally at most ``max_per_image`` overall. With ``plus_one`` the IoU uses the
   reference's "+1 pixel" widths (spec 9 and defect 24);
4. COCO records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in pixels.

The greedy NMS runs for all classes at once: each round keeps the best remaining box of every
class and removes what it suppresses, so the number of rounds is bounded by ``max_per_class``,
not by the number of classes or candidates.
"""
from typing import Sequence

import numpy as np

from src.boxes import area, coordinates, intersection, yxyx_to_xywh


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                max_per_class: int, plus_one: bool = False) -> np.ndarray:
    """Greedy per-class NMS for all classes together.

    Args:
        boxes: (n, 4) corner-form boxes (any consistent order of axes).
        scores: (n,) scores; classes: (n,) integer class of each box.
        iou_threshold: a box whose IoU with a kept box of its class exceeds this is removed.
        max_per_class: at most this many boxes are kept per class.
        plus_one: widths and heights count one extra pixel (the reference's IoU).

    Returns:
        Indices of kept boxes, highest score first (ties: lower index first).
    """
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((-scores, classes))
    sorted_boxes = np.asarray(boxes, np.float64)[order]
    if plus_one:   # the '+1' once, here, rather than in every round
        sorted_boxes[:, 2:] += 1.0
    columns = tuple(np.ascontiguousarray(c) for c in coordinates(sorted_boxes))
    classes = np.asarray(classes)[order]
    areas = area(columns)
    kept_count = np.zeros(int(classes.max()) + 1, np.int64)
    kept = []
    alive = np.arange(len(order))
    while alive.size:
        alive_classes = classes[alive]
        is_top = np.empty(alive.size, bool)
        is_top[0] = True
        np.not_equal(alive_classes[1:], alive_classes[:-1], out=is_top[1:])
        tops = alive[is_top]
        kept.append(tops)
        top = tops[np.cumsum(is_top) - 1]
        inter = intersection(tuple(c[alive] for c in columns), tuple(c[top] for c in columns))
        survives = inter <= iou_threshold * (areas[alive] + areas[top] - inter)
        survives &= ~is_top
        kept_count[classes[tops]] += 1
        survives &= kept_count[alive_classes] < max_per_class
        alive = alive[survives]
    kept = order[np.concatenate(kept)]
    return kept[np.lexsort((kept, -scores[kept]))]


class PostProcessor:
    """Network outputs of a batch -> COCO detection records.

    Args:
        category_ids: result category id of each class index (index 0, background, unused).
        min_score, nms_threshold, max_per_class, max_per_image, plus_one: see the module text;
            ``max_per_image`` 0 means no cap.
    """

    def __init__(self, category_ids, min_score=0.1, nms_threshold=0.6, max_per_class=100,
                 max_per_image=0, plus_one=True):
        self.category_ids = np.asarray(category_ids)
        self.min_score = float(min_score)
        self.nms_threshold = float(nms_threshold)
        self.max_per_class = int(max_per_class)
        self.max_per_image = int(max_per_image)
        self.plus_one = bool(plus_one)

    @classmethod
    def from_config(cls, config, category_ids: Sequence[int]) -> "PostProcessor":
        return cls(category_ids, config.min_score, config.nms_threshold, config.max_boxes,
                   config.max_detections_per_image, config.nms_plus_one)

    def detect(self, boxes: np.ndarray, scores: np.ndarray, image_hw: Sequence[float]) -> tuple:
        """Detections of one image.

        Args:
            boxes: (A, 4) normalised (ymin, xmin, ymax, xmax); scores: (A, C) class scores.
            image_hw: original (height, width) in pixels.

        Returns:
            (boxes (K, 4) pixel (ymin, xmin, ymax, xmax), scores (K,), class indices (K,)),
            highest score first.
        """
        anchor, column = np.nonzero(scores[:, 1:] > self.min_score)
        classes = column + 1
        candidate_scores = scores[anchor, classes]
        height, width = float(image_hw[0]), float(image_hw[1])
        pixel_boxes = boxes[anchor].astype(np.float64) * np.array([height, width, height, width])
        keep = batched_nms(pixel_boxes, candidate_scores, classes, self.nms_threshold,
                           self.max_per_class, self.plus_one)
        if self.max_per_image > 0:
            keep = keep[:self.max_per_image]
        return pixel_boxes[keep], candidate_scores[keep], classes[keep]

    def coco_records(self, img_id: int, boxes: np.ndarray, scores: np.ndarray,
                     classes: np.ndarray) -> list:
        """COCO result dicts for one image's detections (pixel y-first corners in)."""
        xywh = np.round(yxyx_to_xywh(boxes), 3).tolist()
        categories = self.category_ids[np.asarray(classes, np.int64)].tolist()
        rounded = np.round(np.asarray(scores, np.float64), 5).tolist()
        image_id = int(img_id)
        return [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                for b, s, c in zip(xywh, rounded, categories)]

    def process_batch(self, img_ids: Sequence[int], boxes: np.ndarray, scores: np.ndarray,
                      image_shapes: Sequence) -> list:
        """COCO records of a batch: img_ids (B,), boxes (B, A, 4), scores (B, A, C),
        image_shapes (B, 2) original (height, width)."""
        records = []
        for img_id, image_boxes, image_scores, hw in zip(np.ravel(img_ids), boxes, scores,
                                                         image_shapes):
            records.extend(self.coco_records(img_id, *self.detect(image_boxes, image_scores, hw)))
        return records
