"""Per-image transforms of training (spec 7.5) and evaluation (spec 7.6), in numpy and OpenCV.

Images are RGB uint8 (H, W, 3); ground truth is (N, 5) float32 pixel rows
``(ymin, xmin, ymax, xmax, label)`` (see ``src.box_coder`` for the conventions).
"""
import cv2
import numpy as np

from src.boxes import iou
from src.data.records import annotation_rows

CROP_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9)
CROP_TRIALS = 50
CROP_RULES = ("reference", "ssd")


def crop_is_rejected(overlap, min_iou, rule):
    """Whether a crop fails its sampled minimum IoU.

    'reference': rejected only if some overlapping box is below ``min_iou`` AND some is above
    ``min_iou + 0.2`` (spec defect 19: many crops pass that violate ``min_iou``).
    'ssd': rejected if any overlapping box is below ``min_iou``, as in the SSD paper.
    """
    if rule not in CROP_RULES:
        raise ValueError(f"crop rule {rule!r}: expected one of {', '.join(CROP_RULES)}")
    if rule == "ssd":
        return overlap.min() < min_iou
    return overlap.min() < min_iou and overlap.max() > min_iou + 0.2


def random_sample_crop(image, gt, rng, rule="reference"):
    """SSD random crop: a minimum IoU from {none, 0.1, 0.3, 0.5, 0.7, 0.9}, up to 50 trials.

    A trial samples a crop of 0.3-1.0 of each side with aspect h/w in [0.5, 2]; it keeps the
    boxes that overlap it and whose centre lies strictly inside, clipped and shifted. If no
    trial passes the image is returned unchanged. Images without boxes take the first trial.
    """
    height, width = image.shape[:2]
    min_iou = CROP_MIN_IOUS[rng.integers(len(CROP_MIN_IOUS))]
    if min_iou is None:
        return image, gt
    boxes = gt[:, :4]
    for _ in range(CROP_TRIALS):
        w = rng.uniform(0.3, 1.0) * width
        h = rng.uniform(0.3, 1.0) * height
        if h / w < 0.5 or h / w > 2:
            continue
        left = rng.uniform() * (width - w)
        top = rng.uniform() * (height - h)
        rect = np.array([int(top), int(left), int(top + h), int(left + w)], np.float32)
        if len(gt) == 0:
            return image[int(rect[0]):int(rect[2]), int(rect[1]):int(rect[3])], gt
        overlap = iou(boxes, rect)
        touching = overlap > 0
        if not touching.any() or crop_is_rejected(overlap[touching], min_iou, rule):
            continue
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.all((rect[:2] < centers) & (centers < rect[2:]), axis=1) & touching
        if not inside.any():
            continue
        kept = gt[inside].copy()
        kept[:, :2] = np.maximum(kept[:, :2], rect[:2]) - rect[:2]
        kept[:, 2:4] = np.minimum(kept[:, 2:4], rect[2:]) - rect[:2]
        return image[int(rect[0]):int(rect[2]), int(rect[1]):int(rect[3])], kept
    return image, gt


LEVELS = np.arange(256, dtype=np.float32)


def random_color_adjust(image, rng, brightness=0.4, contrast=0.4, saturation=0.4):
    """Colour jitter as MindSpore's RandomColorAdjust: brightness, contrast and saturation
    factors each drawn from [1 - x, 1 + x], applied in a random order on uint8 images (so each
    step rounds and saturates, as the C++ op does). Brightness scales; contrast blends with the
    mean grey level; saturation blends with the grey image. RGB uint8 in and out."""
    factors = (("brightness", rng.uniform(1 - brightness, 1 + brightness)),
               ("contrast", rng.uniform(1 - contrast, 1 + contrast)),
               ("saturation", rng.uniform(1 - saturation, 1 + saturation)))
    out = image
    for k in rng.permutation(3):
        name, factor = factors[k]
        if name == "saturation":
            gray = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            out = cv2.addWeighted(out, factor, gray, 1 - factor, 0)
            continue
        base = 0.0 if name == "brightness" else float(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).mean())
        table = np.clip(np.rint((LEVELS - base) * factor + base), 0, 255).astype(np.uint8)
        out = cv2.LUT(out, table)
    return np.ascontiguousarray(out)


def resize(image, shape):
    """Bilinear resize to (height, width), aspect ratio not kept (as the reference)."""
    return cv2.resize(image, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)


def normalize_boxes(gt, height, width):
    """Pixel rows -> rows normalised by the image height (y) and width (x)."""
    out = gt.astype(np.float32, copy=True)
    out[:, [0, 2]] /= height
    out[:, [1, 3]] /= width
    return out


def flip_boxes(gt):
    """Normalised rows after a horizontal flip: xmin' = 1 - xmax, xmax' = 1 - xmin."""
    out = gt.copy()
    out[:, 1], out[:, 3] = 1 - gt[:, 3], 1 - gt[:, 1]
    return out


class TrainTransform:
    """(RGB image, (N, 5) pixel ground truth, img_id) -> (300x300 RGB image, loc, label,
    num_match).

    Random crop, bilinear resize, horizontal flip (p = 0.5), colour jitter, then matching and
    encoding against the default boxes; normalisation follows as a MindSpore C++ op. The random
    draws of an image depend only on (seed, epoch, img_id), never on which worker thread runs
    it, on its position in the epoch or on how the data is sharded, so an epoch is the same
    whenever it is replayed (resume, mid-epoch too) and however many devices share it.
    """

    def __init__(self, box_coder, img_shape=(300, 300), crop_rule="reference", seed=0, epoch=0):
        self.box_coder = box_coder
        self.img_shape = tuple(img_shape)
        if crop_rule not in CROP_RULES:
            raise ValueError(f"crop_rule {crop_rule!r}: expected one of {', '.join(CROP_RULES)}")
        self.crop_rule = crop_rule
        self.seed, self.epoch = int(seed), int(epoch)

    def __call__(self, image, annotation, img_id, epoch=None):
        """``epoch``: the epoch this row belongs to (a pipeline column), else the one given."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch, int(np.ravel(img_id)[0])])
        gt = annotation_rows(annotation)
        image, gt = random_sample_crop(image, gt, rng, self.crop_rule)
        height, width = image.shape[:2]
        image = resize(image, self.img_shape)
        gt = normalize_boxes(gt, height, width)
        if rng.uniform() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
            gt = flip_boxes(gt)
        image = random_color_adjust(image, rng)
        loc, label, num_match = self.box_coder.encode_targets(gt)
        return image, loc, label, num_match, img_id


class EvalTransform:
    """RGB image -> (resized image, original (height, width) as float32)."""

    def __init__(self, img_shape=(300, 300)):
        self.img_shape = tuple(img_shape)

    def __call__(self, image):
        shape = np.array(image.shape[:2], np.float32)
        return resize(image, self.img_shape), shape


MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)


def network_input(image_rgb, img_shape=(300, 300)):
    """What evaluation feeds the network for one RGB image, in numpy: bilinear resize,
    ImageNet normalisation, HWC -> CHW; (3, H, W) float32."""
    resized = resize(image_rgb, img_shape).astype(np.float32)
    normalised = (resized - np.array(MEAN_RGB, np.float32)) / np.array(STD_RGB, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))
