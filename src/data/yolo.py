"""YOLO-format datasets as Ultralytics and Roboflow export them.

``data.yaml`` names the classes (``names``: a list, or a mapping from class number to name; an
``nc`` given must agree) and the splits (``train``, ``val``: a folder of images, searched
recursively, a text file listing image paths, or a list of those), relative to ``path`` when it
is given (itself relative to data.yaml's folder) and else to data.yaml's folder; a split path
starting with ``../`` that does not exist is also tried without it, as Ultralytics does for
Roboflow's exports. Each image ``.../images/.../a.jpg`` has its labels in
``.../labels/.../a.txt`` (the last ``images`` folder of its path replaced by ``labels``): one
object a line, ``class cx cy w h``, the class a number from 0, the box's centre and size
normalised by the image's width and height (0..1).

Problems are named with the file and line, all at once: a line without exactly 5 numbers, a
class outside ``names``, a value outside 0..1 or a box without area, a label file without an
image; an image without a label file is taken as an image without objects (Ultralytics'
background images), with a warning. Class ``k`` becomes class index ``k + 1`` (0 is the
background); result files use the index as category id, with data.yaml's names. Images are
numbered 1.. in the order of their paths. Boxes are converted to pixels with each image's size,
read from its header here.
"""
import hashlib
import os

import yaml

from src.data.records import (
    ERROR,
    WARNING,
    DatasetError,
    DatasetSource,
    ImageRecord,
    Problem,
    file_fingerprint,
)

DATA_FILE_NAMES = ("data.yaml", "data.yml")
# Image files a split folder may hold (the formats MindSpore's decoder reads; others are skipped)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_KEYS = {"train": "train", "eval": "val"}
COLUMNS = "class cx cy w h"


def find_data_file(location: str) -> str:
    """The data.yaml that ``location`` (the file, or the folder holding it) names."""
    if os.path.isfile(location):
        return location
    if not os.path.isdir(location):
        raise DatasetError(f"YOLO dataset not found: {location} (--data_url: a folder holding "
                           "data.yaml, or the yaml file itself)")
    for name in DATA_FILE_NAMES:
        path = os.path.join(location, name)
        if os.path.isfile(path):
            return path
    raise DatasetError(f"{location}: no {' or '.join(DATA_FILE_NAMES)} in this folder; a YOLO "
                       "dataset (Ultralytics, Roboflow) describes its splits and class names "
                       "there")


def read_data_file(path: str) -> dict:
    """data.yaml as a mapping, with ``names`` a tuple; DatasetError naming the key at fault."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"{path}: cannot be read as YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with 'names', 'train' and 'val'")
    names = data.get("names")
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DatasetError(f"{path}: 'names' numbers the classes {keys}; expected 0.."
                               f"{len(keys) - 1} without gaps")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path}: 'names' must list the class names (a list, or a mapping "
                           "0: name, 1: name, ...)")
    if "nc" in data and data["nc"] != len(names):
        raise DatasetError(f"{path}: 'nc' is {data['nc']} but 'names' has {len(names)} "
                           "classes")
    return {**data, "names": tuple(str(name) for name in names)}


def split_sources(data: dict, data_file: str, key: str) -> list:
    """Absolute paths (folders or list files) of split ``key`` of data.yaml."""
    if data.get(key) in (None, ""):
        raise DatasetError(f"{data_file}: no '{key}' split (the folder or list of its images)")
    folder = os.path.dirname(os.path.abspath(data_file))
    root = os.path.join(folder, str(data["path"])) if data.get("path") else folder
    entries = data[key] if isinstance(data[key], list) else [data[key]]
    paths = []
    for entry in entries:
        path = os.path.normpath(os.path.join(root, str(entry)))
        if not os.path.exists(path) and str(entry).startswith("../"):
            path = os.path.normpath(os.path.join(root, str(entry)[3:]))
        if not os.path.exists(path):
            raise DatasetError(f"{data_file}: '{key}' names {entry}, which is not there "
                               f"(looked for {path})")
        paths.append(path)
    return paths


def image_paths(source: str) -> list:
    """The images of one split entry: a folder (recursively) or a text file of paths (relative
    to its own folder)."""
    if os.path.isdir(source):
        found = [os.path.join(top, name) for top, _, names in os.walk(source) for name in names
                 if name.lower().endswith(IMAGE_EXTENSIONS)]
        return sorted(found)
    with open(source, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    base = os.path.dirname(source)
    return [os.path.normpath(os.path.join(base, line)) for line in lines]


def label_path(image_path: str) -> str:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the
    extension ``.txt``."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, found, tail = image_path.rpartition(images)
    swapped = f"{head}{labels}{tail}" if found else image_path
    return os.path.splitext(swapped)[0] + ".txt"


def image_size(path: str) -> tuple:
    """(height, width) from the image's header; (0, 0) if it cannot be read (the data check
    names such files)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # noqa: BLE001  (any unreadable file: the check reports it)
        return 0, 0


def parse_label_line(text: str, classes: int) -> tuple:
    """(class number, cx, cy, w, h) of one line; ValueError naming every fault of it."""
    values = text.split()
    if len(values) != 5:
        kind = " (a segmentation polygon? export boxes)" if len(values) > 5 else ""
        raise ValueError(f"{len(values)} values, expected 5 ({COLUMNS}){kind}")
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        bad = next(v for v in values if not _is_number(v))
        raise ValueError(f"'{bad}' is not a number ({COLUMNS})") from None
    faults = []
    number = numbers[0]
    if number != int(number) or not 0 <= number < classes:
        faults.append(f"class {values[0]} is outside 0..{classes - 1} (the names of data.yaml)")
    for name, value in zip(("cx", "cy", "w", "h"), numbers[1:]):
        if not 0 <= value <= 1:
            faults.append(f"{name} {value:g} is outside 0..1 (values are normalised by the "
                          "image's size)")
    if numbers[3] <= 0 or numbers[4] <= 0:
        faults.append("a box without area (w or h is 0)")
    if faults:
        raise ValueError("; ".join(faults))
    return int(number), *numbers[1:]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_labels(path: str, classes: int, problems: list, sample: int) -> list:
    """The (class index, cx, cy, w, h) rows of a label file; faulty lines become problems."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(ERROR, path, "", f"cannot be read as text: {exc}", sample))
        return []
    rows = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            label, cx, cy, w, h = parse_label_line(text, classes)
        except ValueError as exc:
            problems.append(Problem(ERROR, path, f"line {number}", str(exc), sample))
            continue
        rows.append((label + 1, cx, cy, w, h))
    return rows


def read_yolo(location: str, split: str, classes: tuple = ()) -> DatasetSource:
    """Split 'train' or 'eval' (data.yaml's ``val``) of the YOLO dataset at ``location``;
    problems are returned, not raised."""
    data_file = find_data_file(location)
    data = read_data_file(data_file)
    names = data["names"]
    if classes and tuple(classes)[1:] != names:
        raise DatasetError(f"{data_file}: its classes {list(names)} are not the --classes "
                           f"given {list(classes)[1:]}; leave --classes out (data.yaml names "
                           "them)")
    key = SPLIT_KEYS[split]
    records: list = []
    problems: list = []
    digest: list = []
    images: list = []
    for source in split_sources(data, data_file, key):
        images += image_paths(source)
    label_folders = set()
    for sample, path in enumerate(images):
        labels = label_path(path)
        label_folders.add(os.path.dirname(labels))
        height, width = image_size(path)
        rows = []
        if os.path.isfile(labels):
            status = os.stat(labels)
            digest.append((labels, status.st_size, status.st_mtime_ns))
            rows = read_labels(labels, len(names), problems, sample)
        else:
            problems.append(Problem(WARNING, labels, "", "no label file: the image "
                                    f"{os.path.basename(path)} is taken as one without objects",
                                    sample))
        boxes = [((cy - h / 2) * height, (cx - w / 2) * width, (cy + h / 2) * height,
                  (cx + w / 2) * width) for _, cx, cy, w, h in rows]
        records.append(ImageRecord(sample + 1, path, height, width, boxes,
                                   [r[0] for r in rows],
                                   file_name=os.path.relpath(path, os.path.dirname(data_file))))
    problems += orphan_labels(label_folders, images)
    fingerprint = {"data_file": file_fingerprint(data_file),
                   "labels": {"files": len(digest), "images": len(images),
                              "digest": hashlib.sha1(repr((images, digest)).encode())
                              .hexdigest()}}
    return DatasetSource(records, ("background",) + names, tuple(range(len(names) + 1)),
                         annotation_file=data_file, problems=problems,
                         fingerprint=fingerprint, name=f"YOLO {key}")


def orphan_labels(folders: set, images: list) -> list:
    """An error for each label file in ``folders`` that no image of the split has."""
    wanted = {os.path.normcase(label_path(path)) for path in images}
    problems: list = []
    for folder in sorted(folders):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.endswith(".txt") and os.path.normcase(path) not in wanted:
                problems.append(Problem(ERROR, path, "", "a label file without an image (looked "
                                        f"for {os.path.splitext(name)[0]}.<"
                                        f"{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}> in the "
                                        "matching images folder)"))
    return problems
