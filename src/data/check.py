"""Dataset check: every problem of a split at once, before anything is converted.

Usage: ``python -m src.data.check --dataset coco --data_url ROOT [--split train|eval|both]``
(any config flag works; ``train.py --check_dataset`` does the same for the training split).

It opens every image (fully decoded, so truncated files are caught; or only its header with
``--check_images false``), takes the real image size, clips boxes to the image and drops boxes
without area, and reports: image and box counts, per-class counts, a box-size histogram, and
each problem with its file and line or record. Errors (an image that is missing or cannot be
decoded, an annotation that cannot be parsed, an unknown class, a box whose far corner is above
or left of its near one, a repeated image, no image at all) make a sample (or the split)
unusable; warnings say what was fixed (a box clipped to its image, a box without area there
dropped).
"""
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from src.config_loader import parse_config
from src.data.readers import read_source
from src.data.records import ERROR, WARNING, DatasetError, DatasetSource, Problem
from src.text import listed

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP")
SIZE_EDGES = (0, 16, 32, 64, 96, 128, 256, 512, float("inf"))
CLIP_TOLERANCE = 1.0
NO_IMAGES_ADVICE = {
    "TXT": "the file is empty or holds only blank and '#' lines; each image is a line "
           "'path x1,y1,x2,y2,class ...'",
    "COCO": "its 'images' list is empty",
    "VOC": "the split's list (ImageSets/Main/<split>.txt) names no image",
}


@dataclass
class DatasetReport:
    """What a check found in one split."""

    name: str
    class_names: tuple
    images: int = 0
    empty_images: int = 0
    boxes: int = 0
    ignored_boxes: int = 0
    per_class: dict = field(default_factory=dict)
    size_histogram: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    skipped: int = 0
    clipped_boxes: int = 0
    dropped_boxes: int = 0

    @property
    def errors(self):
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self):
        return [p for p in self.problems if p.severity == WARNING]

    def summary(self):
        return {"images": self.images, "empty_images": self.empty_images, "boxes": self.boxes,
                "ignored_boxes": self.ignored_boxes, "clipped_boxes": self.clipped_boxes,
                "dropped_boxes": self.dropped_boxes, "errors": len(self.errors),
                "warnings": len(self.warnings), "skipped_images": self.skipped}

    def format(self, max_problems=50):
        lines = [f"Dataset check: {self.name}",
                 f"  images {self.images} ({self.empty_images} without boxes), boxes "
                 f"{self.boxes} (+{self.ignored_boxes} ignored: crowd/difficult); "
                 f"{self.clipped_boxes} clipped to the image, {self.dropped_boxes} without area "
                 "dropped"]
        counts = ", ".join(f"{self.class_names[c]} {n}" for c, n in sorted(self.per_class.items()))
        lines.append(f"  per class: {counts or 'none'}")
        if self.size_histogram:
            bins = ", ".join(f"{label} {n}" for label, n in self.size_histogram)
            lines.append(f"  box size sqrt(w*h) in pixels: {bins}")
        lines.append(f"  {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
                     + (f"; {self.skipped} image(s) skipped" if self.skipped else ""))
        for problem in (self.errors + self.warnings)[:max_problems]:
            lines.append(f"  {problem}")
        hidden = len(self.problems) - max_problems
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


def inspect_image(path, decode=True):
    """(height, width, problem text or '') of an image file; decoding catches truncation.

    Whatever PIL raises on a file is that file's problem, never the check's end: an image far
    larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (DecompressionBombError) is one, and so are
    the assorted errors PIL's parsers raise on malformed headers."""
    from PIL import Image

    if not os.path.isfile(path):
        return 0, 0, "image file not found"
    try:
        with Image.open(path) as image:
            if image.format not in SUPPORTED_FORMATS:
                return 0, 0, (f"{image.format} images are not supported (MindSpore decodes "
                              f"{', '.join(SUPPORTED_FORMATS)})")
            if decode:
                image.load()
            return image.height, image.width, ""
    except Image.DecompressionBombError as exc:
        return 0, 0, f"too large to decode safely: {exc}"
    except Exception as exc:  # noqa: BLE001  (a bad file, whatever PIL makes of it)
        return 0, 0, f"cannot be decoded: {exc or type(exc).__name__}"


def clip_boxes(record, problems, sample):
    """Clip a record's boxes to its image; drop boxes without area (both reported).

    Returns (number clipped, number dropped)."""
    if len(record.labels) == 0:
        return 0, 0
    boxes = record.boxes
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    for k in np.nonzero(inverted)[0]:
        problems.append(Problem(ERROR, record.path, f"box {k + 1}", (
            f"its far corner is above or left of its near one (y1,x1,y2,x2 = "
            f"{np.round(boxes[k], 1).tolist()}): a malformed annotation (swapped columns, or "
            "x,y,w,h given for corners)"), sample))
    limit = np.array([record.height, record.width, record.height, record.width], np.float32)
    clipped = np.clip(boxes, 0, limit)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]) & ~inverted
    moved = np.abs(clipped - boxes).max(axis=1) > CLIP_TOLERANCE
    for k in np.nonzero(~keep & ~inverted)[0]:
        problems.append(Problem(WARNING, record.path, f"box {k + 1}",
                                f"no area inside the {record.width}x{record.height} image "
                                f"(y1,x1,y2,x2 = {np.round(boxes[k], 1).tolist()}): dropped",
                                sample))
    for k in np.nonzero(keep & moved)[0]:
        problems.append(Problem(WARNING, record.path, f"box {k + 1}",
                                f"extends outside the {record.width}x{record.height} image "
                                f"(y1,x1,y2,x2 = {np.round(boxes[k], 1).tolist()}): clipped",
                                sample))
    record.boxes = clipped[keep]
    record.labels = record.labels[keep]
    record.ignored = record.ignored[keep]
    return int((keep & moved).sum()), int((~keep & ~inverted).sum())


def histogram(sizes):
    counts, _ = np.histogram(sizes, bins=np.array(SIZE_EDGES, np.float64))
    labels = [f"<{int(b)}" if a == 0 else (f">={int(a)}" if b == float("inf") else
                                            f"{int(a)}-{int(b)}")
              for a, b in zip(SIZE_EDGES[:-1], SIZE_EDGES[1:])]
    return [(label, int(n)) for label, n in zip(labels, counts)]


def class_count_problem(source, num_classes, classes_of=""):
    """The error of a class count ``num_classes`` (background included) that is not the
    data's: fixed by --num_classes when it came from the flag; when it came from a checkpoint
    (``classes_of`` describes it), no flag fixes it."""
    names = listed(source.class_names[1:])
    count = source.num_classes - 1
    data = (f"the data has {count} class{'' if count == 1 else 'es'} ({source.num_classes} "
            f"with background: {names})")
    if classes_of:
        return (f"{data}, but {classes_of}: a checkpoint is scored on data of the classes it "
                "was trained for. Evaluate it on such data, or evaluate a checkpoint trained on "
                "these classes")
    return f"{data} but num_classes is {num_classes}: pass --num_classes {source.num_classes}"


def check_source(source, num_classes=None, decode_images=True, workers=2, progress=True,
                 classes_of=""):
    """Check a DatasetSource in place (sizes filled in, boxes clipped); returns a report.
    ``classes_of``: where ``num_classes`` came from when not from the flag (a checkpoint), for
    the message when it is not the data's class count."""
    problems = list(source.problems)
    if num_classes is not None and num_classes != source.num_classes:
        problems.append(Problem(ERROR, source.annotation_file, "",
                                class_count_problem(source, num_classes, classes_of)))
    if not source.records:
        problems.append(Problem(ERROR, source.annotation_file, "", (
            f"no image in {source.name}: nothing to train or evaluate on; "
            f"{NO_IMAGES_ADVICE.get(source.name.partition(' ')[0], 'is it the right file?')}")))
    seen: dict = {}
    clipped, dropped = 0, 0
    for sample, record in enumerate(source.records):
        key = os.path.normcase(os.path.abspath(record.path))
        if key in seen:
            problems.append(Problem(ERROR, record.path, f"image id {record.img_id}",
                                    f"the same image file as image id {seen[key]}", sample))
        else:
            seen[key] = record.img_id
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda r: inspect_image(r.path, decode_images), source.records)
        for sample, (record, (height, width, trouble)) in enumerate(
                tqdm(zip(source.records, results), total=len(source.records),
                     desc=f"check {source.name}", unit="img", disable=not progress,
                     dynamic_ncols=True)):
            if trouble:
                problems.append(Problem(ERROR, record.path, f"image id {record.img_id}", trouble,
                                        sample))
                continue
            if (record.height, record.width) not in ((0, 0), (height, width)):
                problems.append(Problem(WARNING, record.path, f"image id {record.img_id}",
                                        f"annotated as {record.width}x{record.height}, the file "
                                        f"is {width}x{height}: the file's size is used", sample))
            record.height, record.width = height, width
            counts = clip_boxes(record, problems, sample)
            clipped, dropped = clipped + counts[0], dropped + counts[1]
    report = DatasetReport(source.name, source.class_names, problems=problems,
                           clipped_boxes=clipped, dropped_boxes=dropped)
    labels = np.concatenate([r.labels[~r.ignored] for r in source.records] or [np.zeros(0)])
    for record in source.records:
        bad = record.labels[(record.labels < 1) | (record.labels >= source.num_classes)]
        if len(bad):
            problems.append(Problem(ERROR, record.path, f"image id {record.img_id}",
                                    f"labels {sorted(set(bad.tolist()))} are outside "
                                    f"1..{source.num_classes - 1}"))
    boxes = np.concatenate([r.boxes[~r.ignored] for r in source.records] or [np.zeros((0, 4))])
    report.images = len(source.records)
    report.empty_images = sum(1 for r in source.records if not (~r.ignored).any())
    report.boxes = len(labels)
    report.ignored_boxes = int(sum(r.ignored.sum() for r in source.records))
    report.per_class = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
    report.size_histogram = histogram(np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)))
    return report


def apply_policy(source, report, skip_bad_samples=False, skip_empty_images=False):
    """The records to convert: stop on errors unless skipping; optionally drop empty images.

    Raises DatasetError with the report when errors remain and skipping is off, or when an
    error concerns the whole dataset (not one sample).
    """
    errors = report.errors
    global_errors = [p for p in errors if p.sample < 0]
    if global_errors or (errors and not skip_bad_samples):
        hint = "" if global_errors else ("\n(pass --skip_bad_samples true to leave those images "
                                         "out and go on)")
        raise DatasetError(f"{report.format()}{hint}")
    bad = {p.sample for p in errors}
    records = [r for i, r in enumerate(source.records) if i not in bad]
    if skip_empty_images:
        records = [r for r in records if (~r.ignored).any()]
    report.skipped = len(source.records) - len(records)
    if not records:
        raise DatasetError(f"{report.format()}\nno usable images are left")
    return DatasetSource(records, source.class_names, source.category_ids,
                         source.annotation_file, report.problems, source.fingerprint,
                         source.name)


def main(argv=None):
    """python -m src.data.check: check the configured dataset's splits; exit 1 on errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = "both"
    if "--split" in argv:
        at = argv.index("--split")
        split = argv[at + 1] if at + 1 < len(argv) else ""
        del argv[at:at + 2]
        if split not in ("train", "eval", "both"):
            print("error: --split must be train, eval or both", file=sys.stderr)
            return 2
    config = parse_config(argv, __doc__)

    def work() -> int:
        status = 0
        for name in (("train", "eval") if split == "both" else (split,)):
            try:
                source = read_source(config, name)
            except DatasetError as exc:
                print(f"error: {exc}", file=sys.stderr)
                status = 1
                continue
            report = check_source(source, config.num_classes or None, config.check_images,
                                  config.workers)
            print(report.format(max_problems=1000))
            status = max(status, 1 if report.errors else 0)
        return status

    from src.cli import run_interruptible

    return run_interruptible(work, "the data check", "it writes nothing", mindspore=False)


if __name__ == "__main__":
    sys.exit(main())
