"""Box geometry used everywhere: areas, intersections, IoU, and the one conversion to COCO's
``[x, y, w, h]``.

Conventions (the reference's, see ``src.box_coder``): corner form ``(ymin, xmin, ymax, xmax)``,
y-first, normalised or in pixels; every function works on (..., 4) arrays and broadcasts.
``plus_one`` counts one more pixel per side (width = xmax - xmin + 1), the reference's IoU in
NMS (spec defect 24); elsewhere areas are plain.
"""
import numpy as np


def coordinates(boxes) -> tuple:
    """(ymin, xmin, ymax, xmax) arrays of (..., 4) corner boxes (views); a 4-tuple of such
    arrays is returned as it is (callers that gather coordinates separately, as NMS)."""
    if isinstance(boxes, tuple):
        return boxes
    return tuple(np.moveaxis(np.asarray(boxes), -1, 0))


def area(boxes, plus_one: bool = False) -> np.ndarray:
    """(...,) areas of (..., 4) corner boxes."""
    ymin, xmin, ymax, xmax = coordinates(boxes)
    if plus_one:
        ymax, xmax = ymax + 1.0, xmax + 1.0
    return (ymax - ymin) * (xmax - xmin)


def intersection(boxes_a, boxes_b, plus_one: bool = False) -> np.ndarray:
    """(...,) intersection areas of broadcast (..., 4) corner boxes (0 where they are apart)."""
    a_ymin, a_xmin, a_ymax, a_xmax = coordinates(boxes_a)
    b_ymin, b_xmin, b_ymax, b_xmax = coordinates(boxes_b)
    if plus_one:
        a_ymax, a_xmax, b_ymax, b_xmax = a_ymax + 1.0, a_xmax + 1.0, b_ymax + 1.0, b_xmax + 1.0
    height = np.minimum(a_ymax, b_ymax) - np.maximum(a_ymin, b_ymin)
    width = np.minimum(a_xmax, b_xmax) - np.maximum(a_xmin, b_xmin)
    return np.maximum(height, 0) * np.maximum(width, 0)


def iou(boxes_a, boxes_b, plus_one: bool = False) -> np.ndarray:
    """(...,) IoU of broadcast (..., 4) corner boxes, in their dtype."""
    inter = intersection(boxes_a, boxes_b, plus_one)
    return inter / (area(boxes_a, plus_one) + area(boxes_b, plus_one) - inter)


def iou_matrix(boxes_a, boxes_b, dtype=np.float32) -> np.ndarray:
    """(N, M) IoU of every box of ``boxes_a`` (N, 4) with every box of ``boxes_b`` (M, 4),
    computed in ``dtype`` (float32, as the reference's matching)."""
    a = np.asarray(boxes_a, dtype)[:, None, :]
    b = np.asarray(boxes_b, dtype)[None, :, :]
    return iou(a, b)


def yxyx_to_xywh(boxes) -> np.ndarray:
    """(N, 4) corner boxes ``(ymin, xmin, ymax, xmax)`` -> COCO's ``[x, y, w, h]`` (float64)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1],
                     boxes[:, 2] - boxes[:, 0]], axis=1)


def xywh_to_yxyx(boxes) -> np.ndarray:
    """(N, 4) COCO ``[x, y, w, h]`` -> corner boxes ``(ymin, xmin, ymax, xmax)`` (float64)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 1] + boxes[:, 3],
                     boxes[:, 0] + boxes[:, 2]], axis=1)
