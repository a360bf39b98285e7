"""Pascal VOC reader: ``ROOT/Annotations/*.xml``, ``ROOT/JPEGImages/``, and optionally
``ROOT/ImageSets/Main/<split>.txt`` listing the split's image stems.

Without the list file every annotation of the folder is used (a warning says so). Files are read
in sorted order, so runs are reproducible. VOC boxes are 1-based and inclusive: pixel columns
xmin..xmax are the continuous span [xmin - 1, xmax], which is what is stored. ``difficult``
objects become ignore regions (neither targets nor background; ignored by COCOeval too). Class
names are the ``classes`` given, else the sorted names found in all annotation files (so every
split agrees): VOC's 20 classes in their usual order.
"""
import os
import xml.etree.ElementTree as ET

from src.data.records import (
    ERROR,
    WARNING,
    DatasetError,
    DatasetSource,
    ImageRecord,
    Problem,
    file_fingerprint,
)

ANNOTATIONS, IMAGES, SPLITS = "Annotations", "JPEGImages", os.path.join("ImageSets", "Main")


def list_split(root, split):
    """(annotation stems of the split, problems, the list file or None)."""
    annotation_dir = os.path.join(root, ANNOTATIONS)
    if not os.path.isdir(annotation_dir):
        raise DatasetError(f"VOC annotation folder not found: {annotation_dir} (expected "
                           f"ROOT/{ANNOTATIONS}/*.xml and ROOT/{IMAGES}/)")
    list_file = os.path.join(root, SPLITS, f"{split}.txt")
    if os.path.isfile(list_file):
        with open(list_file, encoding="utf-8") as f:
            stems = [line.split()[0] for line in f if line.strip()]
        return stems, [], list_file
    stems = sorted(name[:-4] for name in os.listdir(annotation_dir) if name.endswith(".xml"))
    note = Problem(WARNING, list_file, "", f"no such list: using all {len(stems)} annotation "
                                            f"files of {annotation_dir} for split '{split}'")
    return stems, [note], None


def parse_annotation(path):
    """(file name, width, height, [(name, difficult, xmin, ymin, xmax, ymax, index)]) of one
    xml file; raises ValueError naming the element that is missing or malformed."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"not valid XML: {exc}") from exc
    file_name = (root.findtext("filename") or "").strip()
    size = root.find("size")
    width = int(float(size.findtext("width") or 0)) if size is not None else 0
    height = int(float(size.findtext("height") or 0)) if size is not None else 0
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise ValueError(f"object {k + 1} lacks <name> or <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(tag) or "missing") for tag in
                                      ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"object {k + 1} ({name}): <bndbox> needs numeric xmin, ymin, "
                             f"xmax, ymax") from exc
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
        objects.append((name, difficult, xmin, ymin, xmax, ymax, k + 1))
    return file_name, width, height, objects


def class_names_in(root):
    """Sorted object names of every annotation file under ROOT/Annotations."""
    names: set = set()
    annotation_dir = os.path.join(root, ANNOTATIONS)
    for entry in sorted(os.listdir(annotation_dir)):
        if entry.endswith(".xml"):
            try:
                names.update(obj[0] for obj in parse_annotation(os.path.join(annotation_dir,
                                                                             entry))[3])
            except ValueError:
                continue
    return ("background",) + tuple(sorted(names))


def read_voc(root, split, classes=()):
    """Read one split of a VOC-layout dataset; problems are returned, not raised."""
    stems, problems, list_file = list_split(root, split)
    class_names = tuple(classes) if classes else class_names_in(root)
    index_of = {name: i for i, name in enumerate(class_names) if i > 0}
    records, digest = [], []
    for sample, stem in enumerate(stems):
        path = os.path.join(root, ANNOTATIONS, f"{stem}.xml")
        image_id = sample + 1
        if not os.path.isfile(path):
            problems.append(Problem(ERROR, path, f"listed in {list_file}", "annotation file "
                                    "not found", sample))
            records.append(ImageRecord(image_id, os.path.join(root, IMAGES, f"{stem}.jpg"), 0, 0))
            continue
        status = os.stat(path)
        digest.append((stem, status.st_size, status.st_mtime_ns))
        try:
            file_name, width, height, objects = parse_annotation(path)
        except ValueError as exc:
            problems.append(Problem(ERROR, path, "", str(exc), sample))
            records.append(ImageRecord(image_id, os.path.join(root, IMAGES, f"{stem}.jpg"), 0, 0))
            continue
        boxes, labels, ignored = [], [], []
        for name, difficult, xmin, ymin, xmax, ymax, number in objects:
            if name not in index_of:
                problems.append(Problem(ERROR, path, f"object {number}", f"class '{name}' is not "
                                        f"among the classes {list(class_names[1:])}", sample))
                continue
            if xmax < xmin or ymax < ymin:
                problems.append(Problem(ERROR, path, f"object {number}", (
                    f"<bndbox> xmin {xmin:g} ymin {ymin:g} xmax {xmax:g} ymax {ymax:g}: "
                    + " and ".join(text for text, bad in (("xmax < xmin", xmax < xmin),
                                                           ("ymax < ymin", ymax < ymin)) if bad)
                    + ", a malformed box (swapped values?)"), sample))
                continue
            boxes.append((ymin - 1, xmin - 1, ymax, xmax))
            labels.append(index_of[name])
            ignored.append(difficult)
        records.append(ImageRecord(image_id, os.path.join(root, IMAGES, file_name or
                                                          f"{stem}.jpg"),
                                   height, width, boxes, labels, ignored))
    fingerprint = {"annotations": {"folder": os.path.abspath(os.path.join(root, ANNOTATIONS)),
                                   "files": len(digest), "digest": hash_of(digest)}}
    if list_file:
        fingerprint["list"] = file_fingerprint(list_file)
    return DatasetSource(records, class_names, tuple(range(len(class_names))),
                         annotation_file=list_file or os.path.join(root, ANNOTATIONS),
                         problems=problems, fingerprint=fingerprint, name=f"VOC {split}")


def hash_of(items):
    import hashlib

    return hashlib.sha1(repr(items).encode()).hexdigest()
