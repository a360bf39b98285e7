"""The one record type every dataset reader produces, the source it came from, and problems."""
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ERROR = "error"
WARNING = "warning"


class DatasetError(ValueError):
    """Input data that cannot be used; the message names the file and the record."""


@dataclass(frozen=True)
class Problem:
    """Something wrong in the input, located to a file and a line or record.

    Errors make a sample unusable (the run stops unless such samples are skipped); warnings
    describe what was fixed (a box clipped to the image, an empty box dropped).
    """

    severity: str
    file: str
    where: str
    message: str
    sample: int = -1

    def __str__(self):
        where = f" ({self.where})" if self.where else ""
        return f"{self.severity}: {self.file}{where}: {self.message}"


@dataclass
class ImageRecord:
    """One image and its ground truth.

    ``boxes`` are (N, 4) float32 pixel corners ``(ymin, xmin, ymax, xmax)``, y-first as in
    ``src.box_coder``; ``labels`` are (N,) int32 class indices 1..num_classes-1; ``ignored``
    (N,) marks boxes that are neither targets nor background (COCO crowd, VOC difficult).
    N may be 0. ``height``/``width`` are 0 until known (the TXT format has no sizes).
    """

    img_id: int
    path: str
    height: int
    width: int
    # Any array-like in; numpy arrays after __post_init__.
    boxes: Any = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: Any = field(default_factory=lambda: np.zeros((0,), np.int32))
    ignored: Any = None
    file_name: str = ""

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int32).reshape(-1)
        if self.ignored is None:
            self.ignored = np.zeros(len(self.labels), bool)
        self.ignored = np.asarray(self.ignored, bool).reshape(-1)
        if not self.file_name:
            self.file_name = self.path.rsplit("/", 1)[-1]

    def annotation(self) -> np.ndarray:
        """(N, 5) float32 rows ``(ymin, xmin, ymax, xmax, label)`` in pixels; ignored boxes
        carry their label negated."""
        labels = np.where(self.ignored, -self.labels, self.labels).astype(np.float32)
        return np.concatenate([self.boxes, labels.reshape(-1, 1)], axis=1)


@dataclass
class DatasetSource:
    """Records of one split plus what maps class indices to names and result category ids.

    ``class_names[i]`` names class index i (0 is 'background'); ``category_ids[i]`` is the id a
    result json uses for class i (COCO's own ids, 80 of 1..90, for COCO data; the index itself
    for VOC and TXT data). ``fingerprint`` describes the input files, so that a converted set
    can tell whether it is still current. ``problems`` are what the reader found.
    """

    records: list
    class_names: tuple
    category_ids: tuple
    annotation_file: str = ""
    problems: list = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)
    name: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def annotation_rows(stored: np.ndarray) -> np.ndarray:
    """(N, 5) rows from an annotation read back from MindRecord.

    MindRecord returns an empty [-1, 5] array as a 0-d value, so anything that is not 2-d is an
    image without boxes.
    """
    stored = np.asarray(stored, np.float32)
    if stored.ndim != 2:
        return np.zeros((0, 5), np.float32)
    return stored.reshape(-1, 5)


def file_fingerprint(path: str) -> dict:
    """Where a file is, how big, and when it last changed."""
    import os

    status = os.stat(path)
    return {"path": os.path.abspath(path), "size": status.st_size,
            "mtime_ns": status.st_mtime_ns}
