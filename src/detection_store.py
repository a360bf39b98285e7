"""The detections of an evaluation, kept compact until they are scored or written.

A COCO result record ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (pixels;
``bbox`` rounded to 3 decimals, ``score`` to 5) costs ~1 KB as a Python dict, and an untrained
81-class model gives up to 8,000 a COCO image: tens of GB for COCO val. Here each image's
detections are integer columns instead, 22 bytes a detection: boxes in thousandths of a pixel
(int32), scores in units of 1e-5 (int32) and the class index (int16). The values are exactly
those of the records: ``np.round(v, d)`` is ``rint(v * 10**d) / 10**d``, and the records are
rebuilt with that division.
"""
from typing import Iterator, Optional, Sequence

import numpy as np

from src.files import write_atomic

BOX_SCALE = 1000          # bbox values carry 3 decimals
SCORE_SCALE = 100000      # scores carry 5
_INT32_LIMIT = 2 ** 31 - 1
_FLOAT_EXACT_ID = 2 ** 53  # image ids above this do not survive a float64 array
_RECORD = '{"image_id": %d, "category_id": %d, "bbox": [%r, %r, %r, %r], "score": %r}'


class DetectionStore:
    """Detections of many images, image by image, in the order they were added.

    Args:
        category_ids: result category id of each class index (index 0, background, unused).
    """

    def __init__(self, category_ids: Sequence[int]):
        self.category_ids = np.asarray(category_ids, np.int64)
        # (image id, boxes (k, 4) int32, scores (k,) int32, classes (k,)) per image
        self._images: list = []
        self._count = 0

    def add(self, img_id: int, xywh: np.ndarray, scores: np.ndarray,
            classes: np.ndarray) -> None:
        """One image's detections: ``xywh`` (k, 4) COCO boxes in pixels, ``scores`` (k,),
        ``classes`` (k,) class indices. Rounded here to the records' 3 and 5 decimals."""
        boxes = np.rint(np.asarray(xywh, np.float64).reshape(-1, 4) * BOX_SCALE)
        scores = np.rint(np.asarray(scores, np.float64).ravel() * SCORE_SCALE)
        classes = np.asarray(classes, np.int64).ravel()
        if not (len(boxes) == len(scores) == len(classes)):
            raise ValueError(f"image {img_id}: {len(boxes)} boxes, {len(scores)} scores and "
                             f"{len(classes)} classes; expected one of each per detection")
        if len(boxes) and not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError(f"image {img_id}: a detection's box or score is not a finite number")
        if len(boxes) and np.abs(boxes).max() > _INT32_LIMIT:
            raise ValueError(f"image {img_id}: a box coordinate beyond "
                             f"{_INT32_LIMIT // BOX_SCALE:,} pixels")
        if len(classes) and (classes.min() < 0 or classes.max() >= len(self.category_ids)):
            raise ValueError(f"image {img_id}: class index outside 0..{len(self.category_ids) - 1}")
        self._images.append((int(img_id), boxes.astype(np.int32), scores.astype(np.int32),
                             classes.astype(np.int16)))
        self._count += len(boxes)

    def __len__(self) -> int:
        return self._count

    @property
    def image_ids(self) -> list:
        """Ids of the images added (also those without detections), in order."""
        return [image[0] for image in self._images]

    @property
    def image_count(self) -> int:
        return len(self._images)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes + s.nbytes + c.nbytes for _, b, s, c in self._images)

    def category_counts(self) -> dict:
        """{category id: number of detections}, every category of ``category_ids``."""
        counts = np.zeros(len(self.category_ids), np.int64)
        for _, _, _, classes in self._images:
            counts += np.bincount(classes, minlength=len(counts))
        return {int(c): int(n) for c, n in zip(self.category_ids, counts)}

    def image(self, img_id: int) -> tuple:
        """One image's detections: (xywh (k, 4) pixels, scores (k,), class indices (k,)),
        empty when it has none or was not added."""
        for own, boxes, scores, classes in self._images:
            if own == img_id:
                return boxes / BOX_SCALE, scores / SCORE_SCALE, classes.astype(np.int64)
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)

    def _blocks(self, category_ids: Optional[Sequence[int]]) -> Iterator[tuple]:
        """Per image: (id, xywh (k, 4) float64, scores (k,) float64, category ids (k,)),
        only detections of ``category_ids`` when given."""
        wanted = None
        if category_ids is not None:
            wanted = np.isin(self.category_ids, np.asarray(category_ids, np.int64))
        for img_id, boxes, scores, classes in self._images:
            if wanted is not None:
                keep = wanted[classes]
                boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            yield (img_id, boxes / BOX_SCALE, scores / SCORE_SCALE,
                   self.category_ids[classes.astype(np.int64)])

    def array(self, category_ids: Optional[Sequence[int]] = None) -> np.ndarray:
        """(n, 7) float64 rows ``[image_id, x, y, w, h, score, category_id]`` (the layout of
        ``COCO.loadRes`` arrays), optionally only of ``category_ids``."""
        if not self.fits_array:
            raise ValueError("image ids beyond 2^53 cannot be float64 rows; use records()")
        rows = [np.column_stack([np.full(len(s), img_id, np.float64), xywh, s,
                                 categories.astype(np.float64)])
                for img_id, xywh, s, categories in self._blocks(category_ids)]
        return np.concatenate(rows) if rows else np.zeros((0, 7))

    @property
    def fits_array(self) -> bool:
        """Whether every image id is exact in ``array()``'s float64 rows."""
        return all(abs(i) < _FLOAT_EXACT_ID for i in self.image_ids)

    def records(self, category_ids: Optional[Sequence[int]] = None) -> list:
        """COCO result dicts (Python ints and floats), optionally only of ``category_ids``."""
        return [{"image_id": img_id, "category_id": c, "bbox": b, "score": s}
                for img_id, xywh, scores, categories in self._blocks(category_ids)
                for b, s, c in zip(xywh.tolist(), scores.tolist(), categories.tolist())]

    def write_json(self, path: str) -> str:
        """All records as a JSON list (the text ``json.dump`` writes), image by image, written
        atomically: memory stays that of one image's records."""
        def write(f):
            f.write("[")
            first = True
            for img_id, xywh, scores, categories in self._blocks(None):
                if not len(scores):
                    continue
                text = ", ".join(_RECORD % (img_id, c, *b, s) for b, s, c in zip(
                    xywh.tolist(), scores.tolist(), categories.tolist()))
                f.write(text if first else ", " + text)
                first = False
            f.write("]")
        return write_atomic(path, write)
