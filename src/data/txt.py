"""The plain TXT ("other") format of the reference: one image per line,

    relative/path.jpg x1,y1,x2,y2,c x1,y1,x2,y2,c ...

x first, in pixels, ``c`` the class index (1..num_classes-1; 0 is background), paths relative
to the image folder. (The reference read these columns as y first: spec defect 15.) A line with
only a path is an image without objects. Blank lines and lines starting with '#' are skipped.
Image ids are line numbers. Class names are the ``classes`` given, else ``class_1`` ... up to
``num_classes - 1``, or, with ``num_classes`` 0 (not given), up to the highest class index in
the file.
"""
import os

from src.data.records import (
    ERROR,
    DatasetError,
    DatasetSource,
    ImageRecord,
    Problem,
    file_fingerprint,
)


def default_class_names(num_classes):
    return ("background",) + tuple(f"class_{i}" for i in range(1, num_classes))


def parse_line(text, num_classes):
    """(relative path, [(ymin, xmin, ymax, xmax, label)]) of one line; ValueError if malformed
    (a class outside 1..num_classes-1; num_classes None: any class from 1)."""
    parts = text.split()
    rows = []
    for k, field in enumerate(parts[1:], start=1):
        values = field.split(",")
        if len(values) != 5:
            raise ValueError(f"box {k} '{field}' has {len(values)} numbers, expected 5 "
                             "(x1,y1,x2,y2,class)")
        try:
            x1, y1, x2, y2 = (float(v) for v in values[:4])
            label = int(values[4])
        except ValueError as exc:
            raise ValueError(f"box {k} '{field}': {exc}") from exc
        if label < 1 or (num_classes is not None and label >= num_classes):
            upper = "" if num_classes is None else num_classes - 1
            raise ValueError(f"box {k} '{field}': class {label} is outside 1..{upper} "
                             "(0 is background)")
        rows.append((y1, x1, y2, x2, label))
    return parts[0], rows


def read_txt(image_dir, anno_path, num_classes, classes=()):
    """Read a TXT annotation file; problems (with line numbers) are returned, not raised."""
    if not os.path.isfile(anno_path):
        raise DatasetError(f"TXT annotation file not found: {anno_path}")
    if not os.path.isdir(image_dir):
        raise DatasetError(f"image folder not found: {image_dir} (--image_dir)")
    known = len(classes) if classes else (num_classes or None)
    records, problems = [], []
    try:
        with open(anno_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{anno_path}: cannot be read as text: {exc}") from exc
    for number, text in enumerate(lines, start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        sample = len(records)
        try:
            relative, rows = parse_line(text, known)
        except ValueError as exc:
            problems.append(Problem(ERROR, anno_path, f"line {number}", str(exc), sample))
            relative, rows = text.split()[0], []
        records.append(ImageRecord(number, os.path.join(image_dir, relative), 0, 0,
                                   [r[:4] for r in rows], [r[4] for r in rows],
                                   file_name=relative))
    if classes:
        class_names = tuple(classes)
    else:
        highest = max((int(label) for r in records for label in r.labels), default=1)
        class_names = default_class_names(known or highest + 1)
    return DatasetSource(records, class_names, tuple(range(len(class_names))),
                         annotation_file=anno_path, problems=problems,
                         fingerprint={"annotations": file_fingerprint(anno_path)},
                         name=f"TXT {os.path.basename(anno_path)}")
