"""Default boxes (anchors) of SSD-ResNet34, spec section 4.

Boxes are normalised to [0, 1] and y-first, as everywhere in this project (see ``src.box_coder``):
centre form ``(cy, cx, h, w)`` and corner form ``(ymin, xmin, ymax, xmax)``.

Order is location-major, matching the heads' flattening: feature map k, then row, then column,
then the box sizes of that cell. Box ``idx = start_k + (row * F_k + col) * n_k + d``.

The reference places centres at ``(i + 0.5) / (S / step_k)``; with its steps (7, 15, ...) the
38x38 and 19x19 maps stop at 0.875 and 0.925, leaving the bottom-right without small boxes
(spec defect 1). Steps of (8, 16, 32, 64, 100, 300) cover the image; the reference's values stay
the default so its published results apply.
"""
import json
import math
import shlex
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from src.config import Config

# The settings that place the default boxes and decode offsets against them: stored in every
# training checkpoint, so that inference and resuming can refuse other boxes.
BOX_KEYS = ("img_shape", "feature_size", "steps", "min_scale", "max_scale", "aspect_ratios",
            "prior_scaling")


@dataclass(frozen=True)
class DefaultBoxes:
    """Default boxes in both forms, float32, shape (N, 4) each."""

    cyxhw: np.ndarray
    yxyx: np.ndarray

    def __len__(self) -> int:
        return len(self.cyxhw)


def box_sizes(scale: float, next_scale: float, ratios: Sequence[float]) -> list:
    """(w, h) of the boxes of one cell: square, (wide, tall) per ratio, then the in-between
    square."""
    sizes = [(scale, scale)]
    for ratio in ratios:
        root = math.sqrt(ratio)
        sizes.append((scale * root, scale / root))
        sizes.append((scale / root, scale * root))
    between = math.sqrt(scale * next_scale)
    sizes.append((between, between))
    return sizes


def generate_default_boxes(img_size: int = 300,
                           feature_size: Sequence[int] = (38, 19, 10, 5, 3, 1),
                           steps: Sequence[float] = (7, 15, 30, 60, 100, 300),
                           min_scale: float = 0.2, max_scale: float = 0.95,
                           aspect_ratios: Sequence[Sequence[float]] = ((2,), (2, 3), (2, 3),
                                                                       (2, 3), (2,), (2,))
                           ) -> DefaultBoxes:
    """Generate SSD default boxes (no clipping to [0, 1], as the reference).

    Args:
        img_size: network input side S in pixels.
        feature_size: side F_k of each square feature map.
        steps: pixel step of each map; centres sit at (i + 0.5) * step / S.
        min_scale, max_scale: box scale of the first and last map (linear in between; a scale of
            1.0 follows the last one for its in-between box).
        aspect_ratios: ratios per map; each adds a wide and a tall box.

    Returns:
        DefaultBoxes with ``cyxhw`` and ``yxyx`` arrays of shape (sum F_k^2 n_k, 4), float32.
    """
    maps = len(feature_size)
    if not len(steps) == len(aspect_ratios) == maps:
        raise ValueError(f"steps ({len(steps)}), aspect_ratios ({len(aspect_ratios)}) and "
                         f"feature_size ({maps}) need one entry per feature map")
    scales = [min_scale + (max_scale - min_scale) * k / (maps - 1) for k in range(maps)] + [1.0]
    rows: list = []
    for k, side in enumerate(feature_size):
        cells_per_unit = img_size / steps[k]
        sizes = box_sizes(scales[k], scales[k + 1], aspect_ratios[k])
        for i in range(side):
            for j in range(side):
                cy, cx = (i + 0.5) / cells_per_unit, (j + 0.5) / cells_per_unit
                rows.extend((cy, cx, h, w) for w, h in sizes)
    exact = np.array(rows, dtype=np.float64)
    # Corners from the float64 centres and sizes, rounded once, as the reference computes them:
    # from the float32 centre form one value in three would differ by an ulp, and where anchors
    # tie on IoU with a small ground truth that changes which one is its forced match.
    half = exact[:, 2:] / 2
    yxyx = np.concatenate([exact[:, :2] - half, exact[:, :2] + half], axis=1)
    return DefaultBoxes(cyxhw=exact.astype(np.float32), yxyx=yxyx.astype(np.float32))


def default_boxes_from_config(config: Config) -> DefaultBoxes:
    """The default boxes a Config describes; checks the generator's count against the one the
    config derives (``num_ssd_boxes``: the heads are built for that many)."""
    boxes = generate_default_boxes(config.img_shape[0], config.feature_size, config.steps,
                                   config.min_scale, config.max_scale, config.aspect_ratios)
    if len(boxes) != config.num_ssd_boxes:
        raise ValueError(f"the anchor settings give {len(boxes)} default boxes but num_ssd_boxes "
                         f"is {config.num_ssd_boxes}")
    return boxes


def box_settings(config: Config) -> dict:
    """{key: value} of ``BOX_KEYS`` as JSON values (tuples become lists)."""
    return json.loads(json.dumps({key: getattr(config, key) for key in BOX_KEYS}))


def box_differences(stored: dict, config: Config) -> list:
    """``stored`` box settings (as ``box_settings`` writes them) against ``config``'s: one
    ``(key, stored value, config's value)`` per key that differs; keys ``stored`` lacks are
    not compared."""
    own = box_settings(config)
    return [(key, stored[key], own[key]) for key in BOX_KEYS
            if key in stored and stored[key] != own[key]]


def box_flags(settings: dict) -> str:
    """Command-line flags that set these box settings: ``--min_scale 0.1 --steps 8,16,32``."""
    def value(v):
        if isinstance(v, list) and not any(isinstance(x, list) for x in v):
            return ",".join(str(x) for x in v)
        return shlex.quote(json.dumps(v).replace(" ", ""))
    return " ".join(f"--{key} {value(v)}" for key, v in settings.items())
