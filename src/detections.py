"""The one post-processing path: decoded boxes and scores -> detections -> COCO results.

Used by eval.py (and every later consumer of network outputs). Per image:

1. candidates: every (box, class) with score strictly above ``min_score``; class 0
   (background) is never a detection;
2. boxes scaled to the original image's pixels (normalised y-first corners times (h, w, h, w));
3. greedy NMS inside each class (a box is suppressed when its IoU with a kept, higher-scoring box
   of the same class is above ``nms_threshold``), keeping at most ``max_per_class`` boxes per
   class, optionally at most ``max_per_image`` overall. With ``plus_one`` the IoU uses the
   reference's "+1 pixel" widths (spec 9 and defect 24). A class's candidates are visited in
   the reference's order, ``argsort()[::-1]`` of its scores, exactly tied scores included;
4. COCO boxes ``[x, y, w, h]`` in pixels and category ids, kept in a
   ``src.detection_store.DetectionStore`` (compact; the records
   ``{"image_id", "category_id", "bbox", "score"}`` are made from it).

The greedy NMS runs for all classes at once: each round keeps the best remaining box of every
class and removes what it suppresses, so the number of rounds is bounded by ``max_per_class``,
not by the number of classes or candidates.
"""
import ctypes
from typing import Callable, Optional, Sequence

import numpy as np

from src.boxes import area, coordinates, intersection, yxyx_to_xywh
from src.config import Config
from src.detection_store import DetectionStore


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
        Indices of kept boxes, highest score first; equal scores by class, then in the order
        the class's greedy pass kept them (``reference_order``).
    """
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    order = reference_order(scores, classes)
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
    positions = np.sort(np.concatenate(kept))    # class by class, each in its greedy order
    return order[positions[np.argsort(-scores[order[positions]], kind="stable")]]


def reference_order(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The order in which the greedy pass visits candidates: class by class (ascending), each
    class as the reference's ``class_scores.argsort()[::-1]`` orders it, ``class_scores``
    being that class's scores in candidate order (float32 for network outputs). Equal scores
    thus come in numpy's own argsort order, as in the reference; it is not a stable one."""
    by_class = np.argsort(classes, kind="stable")
    groups = np.split(by_class, np.flatnonzero(np.diff(np.asarray(classes)[by_class])) + 1)
    return np.concatenate([group[np.argsort(scores[group])[::-1]] for group in groups])


def kernel_nms() -> Optional[Callable]:
    """``SsdClassNms`` of our kernel library (src/kernels/nms.cc: the same result as
    ``batched_nms`` per image, ~100x faster on 80 full classes), or None where the library is
    not built from the current sources."""
    from src.device import KERNEL_LIBRARY, kernel_library_status

    if kernel_library_status() != "current":
        return None
    function = ctypes.CDLL(KERNEL_LIBRARY).SsdClassNms
    pointer = np.ctypeslib.ndpointer
    function.argtypes = [pointer(np.float32, flags="C"), pointer(np.float32, flags="C"),
                         ctypes.c_int64, ctypes.c_int64, ctypes.c_double, ctypes.c_double,
                         ctypes.c_float, ctypes.c_double, ctypes.c_int64, ctypes.c_int,
                         pointer(np.int64, flags="C"), pointer(np.int64, flags="C")]
    function.restype = ctypes.c_int64
    return function


class PostProcessor:
    """Network outputs of a batch -> COCO detections.

    Args:
        category_ids: result category id of each class index (index 0, background, unused).
        min_score, nms_threshold, max_per_class, max_per_image, plus_one: see the module text;
            ``max_per_image`` 0 means no cap.
        use_kernel: NMS by the kernel library's ``SsdClassNms`` (None: where it is built;
            False: ``batched_nms``, the same result).
        nms: another NMS in ``batched_nms``'s place and signature (pixel boxes, scores,
            classes, iou_threshold, max_per_class, plus_one -> kept indices, highest score
            first), e.g. a peer's for a comparison; the kernel is then not used.
    """

    def __init__(self, category_ids: Sequence[int], min_score=0.1, nms_threshold=0.6,
                 max_per_class=100, max_per_image=0, plus_one=True,
                 use_kernel: Optional[bool] = None, nms: Optional[Callable] = None):
        self.category_ids = tuple(int(c) for c in category_ids)
        self.min_score = float(min_score)
        self.nms_threshold = float(nms_threshold)
        self.max_per_class = int(max_per_class)
        self.max_per_image = int(max_per_image)
        self.plus_one = bool(plus_one)
        self.nms = nms or batched_nms
        self.kernel = kernel_nms() if use_kernel is not False and nms is None else None
        if use_kernel and self.kernel is None:
            raise RuntimeError("the kernel library is not built from the current sources "
                               "(make builds it): its NMS cannot be used")

    @classmethod
    def from_config(cls, config: Config, category_ids: Sequence[int]) -> "PostProcessor":
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
        height, width = float(image_hw[0]), float(image_hw[1])
        found = self._kernel_nms(boxes, scores, height, width) if self.kernel else None
        if found is not None:    # class by class, each in score order without ties
            anchor, classes = found
            keep = np.argsort(-scores[anchor, classes], kind="stable")
        else:
            anchor, column = np.nonzero(scores[:, 1:] > self.min_score)
            classes = column + 1
            candidate_scores = scores[anchor, classes]
            pixel_boxes = boxes[anchor].astype(np.float64) * np.array(
                [height, width, height, width])
            keep = self.nms(pixel_boxes, candidate_scores, classes, self.nms_threshold,
                            self.max_per_class, self.plus_one)
        if self.max_per_image > 0:
            keep = keep[:self.max_per_image]
        anchor, classes = anchor[keep], classes[keep]
        pixel_boxes = boxes[anchor].astype(np.float64) * np.array([height, width, height, width])
        return pixel_boxes, scores[anchor, classes], classes

    def _kernel_nms(self, boxes: np.ndarray, scores: np.ndarray, height: float,
                    width: float) -> Optional[tuple]:
        """(anchors, classes) kept by ``SsdClassNms``, class by class; None where candidates
        that its greedy pass reaches tie on score (``batched_nms`` follows the reference's
        order of those)."""
        boxes = np.ascontiguousarray(boxes, np.float32)
        scores = np.ascontiguousarray(scores, np.float32)
        capacity = self.max_per_class * max(scores.shape[1] - 1, 0)
        anchor, classes = np.empty(capacity, np.int64), np.empty(capacity, np.int64)
        assert self.kernel is not None
        count = self.kernel(boxes, scores, len(scores), scores.shape[1], height, width,
                            self.min_score, self.nms_threshold, self.max_per_class,
                            int(self.plus_one), anchor, classes)
        return (anchor[:count], classes[:count]) if count >= 0 else None

    def process_batch(self, img_ids: Sequence[int], boxes: np.ndarray, scores: np.ndarray,
                      image_shapes: Sequence, store: DetectionStore) -> int:
        """Detections of a batch into ``store`` (COCO boxes, category ids): img_ids (B,),
        boxes (B, A, 4), scores (B, A, C), image_shapes (B, 2) original (height, width).
        Returns how many were added."""
        added = 0
        for img_id, image_boxes, image_scores, hw in zip(np.ravel(img_ids), boxes, scores,
                                                         image_shapes):
            found, found_scores, classes = self.detect(image_boxes, image_scores, hw)
            store.add(img_id, yxyx_to_xywh(found), found_scores, classes)
            added += len(found)
        return added

    def new_store(self) -> DetectionStore:
        """An empty ``DetectionStore`` of this post-processor's category ids."""
        return DetectionStore(self.category_ids)
