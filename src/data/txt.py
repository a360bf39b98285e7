"""The plain TXT ("other") format of the reference: one image per line,

    relative/path.jpg x1,y1,x2,y2,c x1,y1,x2,y2,c ...

x first, in pixels, ``c`` the class index (1..num_classes-1; 0 is background), paths relative
to the image folder. (The reference read these columns as y first: spec defect 15.) The fields
are separated by whitespace, so a path holding spaces is written in double quotes
(``"my photos/a b.jpg" 10,20,60,70,1``); one written without them is an error naming the file
name meant. A box whose x2 < x1 or y2 < y1 is an error (swapped columns, or x,y,w,h given), not
a box to drop. A line with only a path is an image without objects. Blank lines and lines
starting with '#' are skipped.
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


def split_line(text):
    """(path, box fields) of a line. The fields are separated by whitespace; a path holding
    spaces is written in double quotes: ``"my photos/a b.jpg" 10,20,60,70,1``. ValueError for a
    quote that is not closed."""
    text = text.strip()
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise ValueError("the path's opening double quote is not closed")
        return text[1:end], text[end + 1:].split()
    parts = text.split()
    return parts[0], parts[1:]


def name_with_spaces(text):
    """The file name a line most likely meant when it holds spaces unquoted (the words before
    the first of the box fields that end the line), else None."""
    words = text.split()
    start = len(words)
    while start > 1 and "," in words[start - 1]:
        start -= 1
    if start <= 1:
        return None
    stripped = text.strip()
    position = 0
    for word in words[:start]:
        position = stripped.index(word, position) + len(word)
    return stripped[:position]


def parse_line(text, num_classes):
    """(relative path, [(ymin, xmin, ymax, xmax, label)]) of one line; ValueError naming every
    fault of the line if it is malformed (a class outside 1..num_classes-1, num_classes None:
    any class from 1; a box whose x2 < x1 or y2 < y1)."""
    path, fields = split_line(text)
    rows, faults = [], []
    for k, field in enumerate(fields, start=1):
        values = field.split(",")
        if len(values) != 5:
            faults.append(f"box {k} '{field}' has {len(values)} numbers, expected 5 "
                          "(x1,y1,x2,y2,class)")
            continue
        try:
            x1, y1, x2, y2 = (float(v) for v in values[:4])
            label = int(values[4])
        except ValueError as exc:
            faults.append(f"box {k} '{field}': {exc}")
            continue
        if label < 1 or (num_classes is not None and label >= num_classes):
            upper = "" if num_classes is None else num_classes - 1
            faults.append(f"box {k} '{field}': class {label} is outside 1..{upper} "
                          "(0 is background)")
            continue
        inverted = [f"{a} {va:g} < {b} {vb:g}" for a, va, b, vb in
                    (("x2", x2, "x1", x1), ("y2", y2, "y1", y1)) if va < vb]
        if inverted:
            faults.append(f"box {k} '{field}': {' and '.join(inverted)}, a malformed box (the "
                          "columns are the corners x1,y1,x2,y2, not x,y,w,h; swapped?)")
            continue
        rows.append((y1, x1, y2, x2, label))
    if faults:
        raise ValueError("; ".join(faults))
    return path, rows


def spaces_problem(text, image_dir):
    """The message for a line whose file name holds unquoted spaces, or None: the words
    before its box fields name an existing file, or end in a file extension while the first
    word alone names no file."""
    meant = name_with_spaces(text)
    if meant is None or text.lstrip().startswith('"'):
        return None
    exists = os.path.isfile(os.path.join(image_dir, meant))
    extension = os.path.splitext(meant)[1][1:]
    first = os.path.join(image_dir, text.split()[0])
    if not exists and not (extension.isalnum() and not os.path.isfile(first)):
        return None
    return (f"the file name '{meant}'{' (that file exists)' if exists else ''} holds spaces, "
            "but the fields of a line are separated by whitespace (path x1,y1,x2,y2,class "
            f"...): put the name in double quotes (\"{meant}\" ...) or rename the file "
            "without spaces")


def _path_of(text):
    try:
        return split_line(text)[0]
    except ValueError:
        return text.split()[0]


def read_txt(image_dir, anno_path, num_classes, classes=()):
    """Read a TXT annotation file; problems (with line numbers) are returned, not raised."""
    if not os.path.isfile(anno_path):
        raise DatasetError(f"TXT annotation file not found: {anno_path}")
    if not os.path.isdir(image_dir):
        raise DatasetError(f"image folder not found: {image_dir} (--image_dir)")
    known = len(classes) if classes else (num_classes or None)
    records: list = []
    problems: list = []
    try:
        with open(anno_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{anno_path}: cannot be read as text: {exc}") from exc
    for number, text in enumerate(lines, start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        sample = len(records)
        spaces = spaces_problem(text, image_dir)
        if spaces:
            problems.append(Problem(ERROR, anno_path, f"line {number}", spaces, sample))
            relative, rows = name_with_spaces(text), []
        else:
            try:
                relative, rows = parse_line(text, known)
            except ValueError as exc:
                problems.append(Problem(ERROR, anno_path, f"line {number}", str(exc), sample))
                relative, rows = _path_of(text), []
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
