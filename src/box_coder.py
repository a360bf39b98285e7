"""Matching ground truth to default boxes, and encoding/decoding box offsets (spec section 5).

Box conventions of the whole project (the reference's):

* coordinates are normalised to [0, 1] by the image height and width, and **y-first**;
* corner form ``(ymin, xmin, ymax, xmax)``; centre form ``(cy, cx, h, w)``;
* ground-truth rows carry the class index last: ``(ymin, xmin, ymax, xmax, label)`` with labels
  1..num_classes-1 (0 is background; a negative label marks an ignore region);
* COCO's pixel ``[x, y, w, h]`` appears only when results are written as json
  (``src.detections``).

Offsets use the SSD "variances" ``prior_scaling = (0.1, 0.2)``:
``t_y = (gcy - dcy) / (0.1 dh)``, ``t_x = (gcx - dcx) / (0.1 dw)``,
``t_h = ln(gh / dh) / 0.2``, ``t_w = ln(gw / dw) / 0.2``.
"""
import numpy as np

from src.anchors import DefaultBoxes, default_boxes_from_config
from src.boxes import iou_matrix
from src.config import Config


class BoxCoder:
    """Matches ground truth to default boxes and converts between boxes and offsets.

    Args:
        default_boxes: ``src.anchors.DefaultBoxes`` (A boxes).
        match_threshold: IoU a default box needs (strictly) to match a ground-truth box.
        prior_scaling: (centre variance, size variance).
    """

    def __init__(self, default_boxes: DefaultBoxes, match_threshold: float = 0.5,
                 prior_scaling: tuple = (0.1, 0.2)):
        self.anchors_cyxhw = np.asarray(default_boxes.cyxhw, np.float32)
        self.anchors_yxyx = np.asarray(default_boxes.yxyx, np.float32)
        self.match_threshold = np.float32(match_threshold)
        self.center_scale, self.size_scale = (np.float32(s) for s in prior_scaling)

    @classmethod
    def from_config(cls, config: Config) -> "BoxCoder":
        """The coder a Config describes: its default boxes, match_threshold, prior_scaling."""
        return cls(default_boxes_from_config(config), config.match_threshold,
                   config.prior_scaling)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors_cyxhw)

    def match(self, gt_boxes: np.ndarray) -> tuple:
        """Assign each default box the ground truth it overlaps most (spec 5, "Matching").

        Equivalent to the reference's sequential loop over ground truths in file order: every
        ground truth first claims its best default box (its IoU is set to 2.0); a default box
        then takes the ground truth of highest IoU if that IoU is above the threshold, the
        earliest one on ties (so an earlier ground truth keeps a contested forced box).

        Args:
            gt_boxes: (N, 4) corner-form ground truth, N may be 0.

        Returns:
            (matched index (A,) int64 with -1 for background, best IoU (A,) float32).
        """
        gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        if len(gt_boxes) == 0:
            return (np.full(self.num_anchors, -1, np.int64),
                    np.zeros(self.num_anchors, np.float32))
        iou = iou_matrix(gt_boxes, self.anchors_yxyx)
        iou[np.arange(len(gt_boxes)), iou.argmax(axis=1)] = 2.0
        best_gt = iou.argmax(axis=0)
        best_iou = iou[best_gt, np.arange(self.num_anchors)]
        matched = np.where(best_iou > self.match_threshold, best_gt, -1)
        return matched, best_iou

    def encode(self, boxes_yxyx: np.ndarray) -> np.ndarray:
        """Offsets (A, 4) of corner-form boxes (A, 4) relative to the default boxes."""
        boxes = np.asarray(boxes_yxyx, np.float32)
        anchors = self.anchors_cyxhw
        center = (boxes[:, :2] + boxes[:, 2:]) / np.float32(2)
        size = boxes[:, 2:] - boxes[:, :2]
        t_center = (center - anchors[:, :2]) / (self.center_scale * anchors[:, 2:])
        t_size = np.log(np.maximum(size / anchors[:, 2:], np.float32(1e-6))) / self.size_scale
        return np.concatenate([t_center, t_size], axis=1).astype(np.float32)

    def encode_targets(self, gt: np.ndarray) -> tuple:
        """Training targets of one image.

        Args:
            gt: (N, 5) rows ``(ymin, xmin, ymax, xmax, label)``, normalised; N may be 0. Rows
                with a negative label are ignore regions (COCO crowd, VOC difficult): they are
                not matched, and default boxes that would have matched one (IoU above the
                threshold) and match nothing else get label -1, which the loss skips.

        Returns:
            loc (A, 4) float32 offsets (zeros where unmatched), label (A,) int32 (0 =
            background, -1 = ignored), num_match (1,) int32.
        """
        gt = np.asarray(gt, np.float32).reshape(-1, 5)
        ignore = gt[:, 4] < 0
        targets = gt[~ignore]
        matched, _ = self.match(targets[:, :4])
        positive = matched >= 0
        label = np.zeros(self.num_anchors, np.int32)
        label[positive] = targets[matched[positive], 4].astype(np.int32)
        if ignore.any():
            overlap = iou_matrix(gt[ignore, :4], self.anchors_yxyx).max(axis=0)
            label[~positive & (overlap > self.match_threshold)] = -1
        assigned = np.zeros((self.num_anchors, 4), np.float32)
        assigned[positive] = targets[matched[positive], :4]
        loc = np.where(positive[:, None], self.encode(assigned), np.float32(0))
        return loc, label, np.array([positive.sum()], np.int32)

    def decode(self, loc: np.ndarray) -> np.ndarray:
        """Corner-form boxes from offsets ``loc`` (..., A, 4), clipped to [0, 1]."""
        loc = np.asarray(loc, np.float32)
        anchors = self.anchors_cyxhw
        center = loc[..., :2] * self.center_scale * anchors[:, 2:] + anchors[:, :2]
        size = np.exp(loc[..., 2:] * self.size_scale) * anchors[:, 2:]
        boxes = np.concatenate([center - size / 2, center + size / 2], axis=-1)
        return np.clip(boxes, 0, 1).astype(np.float32)
