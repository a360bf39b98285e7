"""The one record type every dataset reader produces, and the source it came from."""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageRecord:
    """One image and its ground truth.

    ``boxes`` are (N, 4) float32 pixel corners ``(ymin, xmin, ymax, xmax)``, y-first as in
    ``src.box_coder``; ``labels`` are (N,) int32 class indices 1..num_classes-1. N may be 0.
    """

    img_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))

    def annotation(self):
        """(N, 5) float32 rows ``(ymin, xmin, ymax, xmax, label)`` in pixels."""
        return np.concatenate([self.boxes.reshape(-1, 4),
                               self.labels.reshape(-1, 1).astype(np.float32)], axis=1)


@dataclass
class DatasetSource:
    """Records of one split plus what maps class indices to names and result category ids.

    ``class_names[i]`` names class index i (0 is 'background'); ``category_ids[i]`` is the id a
    result json uses for class i (COCO's own ids, 80 of 1..90, for COCO data).
    """

    records: list
    class_names: tuple
    category_ids: tuple
    annotation_file: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.class_names)


class DatasetError(ValueError):
    """Input data that cannot be used; the message names the file and the record."""


def annotation_rows(stored):
    """(N, 5) rows from an annotation read back from MindRecord.

    MindRecord returns an empty [-1, 5] array as a 0-d value, so anything that is not 2-d is an
    image without boxes.
    """
    stored = np.asarray(stored, np.float32)
    if stored.ndim != 2:
        return np.zeros((0, 5), np.float32)
    return stored.reshape(-1, 5)
