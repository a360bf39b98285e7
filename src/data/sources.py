"""From a Config to a checked, converted split: reader -> check -> MindRecord set.

The check runs before any conversion and only when the split's set must be (re)written: a set
that is complete and was made from the same files with the same settings is reused as it is.
The returned split holds its set (``src.data.mindrecord.SetHold``): another process's
conversion of other data into the same folder stops instead of replacing it.
"""
import os
from dataclasses import dataclass
from typing import Optional

from src.boxes import yxyx_to_xywh
from src.config import Config
from src.data.check import apply_policy, check_source
from src.data.mindrecord import (
    SetHold,
    conversion_lock,
    current_set,
    other_holders,
    refuse_if_held,
    set_files,
    write_set,
)
from src.data.readers import read_source
from src.data.records import DatasetError

MINDRECORD_PREFIX = {"train": "ssd.mindrecord", "eval": "ssd_eval.mindrecord"}
GROUND_TRUTH_SUFFIX = ".ground_truth.json"


@dataclass
class PreparedSplit:
    """A split ready to read: its source (names, category ids), MindRecord files, the COCO
    ground-truth json to score against, the number of converted images, the check's summary,
    and this process's hold on the set (``SetHold``), kept while the split is referenced, until
    ``release()`` or the process's end."""

    source: object
    files: list
    ground_truth: str
    images: int
    check: dict
    hold: Optional[SetHold] = None

    def release(self) -> None:
        """Let other processes replace the set (once nothing here reads it any more)."""
        if self.hold is not None:
            self.hold.release()


def coco_ground_truth(source):
    """COCO instances json of checked records: ids = class indices, ignored boxes as crowd."""
    images: list = []
    annotations: list = []
    for record in source.records:
        images.append({"id": int(record.img_id), "file_name": record.file_name,
                       "height": int(record.height), "width": int(record.width)})
        for xywh, label, ignored in zip(yxyx_to_xywh(record.boxes), record.labels,
                                        record.ignored):
            x, y, w, h = (float(v) for v in xywh)
            annotations.append({"id": len(annotations) + 1, "image_id": int(record.img_id),
                                "category_id": int(label), "bbox": [x, y, w, h],
                                "area": w * h,
                                "iscrowd": int(bool(ignored)), "segmentation": []})
    categories = [{"id": i, "name": name, "supercategory": "none"}
                  for i, name in enumerate(source.class_names) if i > 0]
    return {"info": {"description": f"ground truth of {source.name}"}, "images": images,
            "annotations": annotations, "categories": categories}


def conversion_settings(config: Config, source):
    """Everything besides the input files that changes what a converted set contains."""
    return {"shards": config.mindrecord_shards, "class_names": list(source.class_names),
            "skip_bad_samples": config.skip_bad_samples,
            "skip_empty_images": config.skip_empty_images, "check_images": config.check_images}


def with_data_classes(config: Config, source, log=print):
    """``config`` with ``num_classes`` taken from the data when it was not given (0)."""
    if config.num_classes:
        return config
    log(f"num_classes {source.num_classes}: from the data ({source.num_classes - 1} classes + "
        f"background, {source.annotation_file})")
    return config.replace(num_classes=source.num_classes)


def prepare_split(config: Config, split, output_dir, progress=True, log=print, classes_of=""):
    """Read a split, and check and convert it unless a current set exists; returns a
    PreparedSplit that holds the set. Raises DatasetError (with the check's report) on unusable
    data; a ``num_classes`` that disagrees with the data is one more problem of that report.

    A set that must be replaced while another process holds it (a running job reads it) is
    left as it is, with a DatasetError saying so (``refuse_if_held``), before the check; this
    process's own holds (e.g. an earlier split of the same set) do not count. The hold is
    taken before the conversion lock is let go, so no conversion can come in between.
    ``classes_of`` says where ``num_classes`` came from when not from the flag (eval.py: the
    checkpoint), for the report's message when the data has another class count."""
    source = read_source(config, split)
    disagrees = bool(config.num_classes) and config.num_classes != source.num_classes
    directory = config.mindrecord_dir or os.path.join(output_dir, "mindrecord")
    prefix = MINDRECORD_PREFIX[split]
    description = {"inputs": source.fingerprint, "settings": conversion_settings(config, source)}
    own_truth = config.dataset != "coco"
    with conversion_lock(directory, prefix) as swept:
        if swept:
            log(f"Removed {len(swept)} folder(s) that interrupted conversions left in "
                f"{directory}: {', '.join(swept)}")
        holders = other_holders(directory, prefix)     # also removes ended processes' files
        manifest = None if disagrees else current_set(directory, prefix, description)
        if manifest:
            log(f"Reusing MindRecord set {os.path.join(directory, prefix)}* "
                f"({manifest['records']} images)")
        else:
            if not disagrees:     # else the check below stops on num_classes, writing nothing
                refuse_if_held(directory, prefix, holders)
            report = check_source(source, config.num_classes or None, config.check_images,
                                  config.workers, progress, classes_of)
            usable = apply_policy(source, report, config.skip_bad_samples,
                                  config.skip_empty_images)
            log(report.format())
            log(f"Writing MindRecord set {os.path.join(directory, prefix)}* "
                f"({len(usable.records)} images)")
            extra = {prefix + GROUND_TRUTH_SUFFIX: coco_ground_truth(usable)} if own_truth else {}
            manifest = write_set(usable.records, directory, prefix, config.mindrecord_shards,
                                 description, extra, {"check": report.summary()}, progress)
        hold = SetHold(directory, prefix)
    ground_truth = (os.path.join(directory, prefix + GROUND_TRUTH_SUFFIX) if own_truth
                    else source.annotation_file)
    return PreparedSplit(source, set_files(directory, manifest), ground_truth,
                         manifest["records"], manifest.get("check", {}), hold)


def check_split(config: Config, split):
    """--check_dataset: check a split without converting it; prints the report.

    Returns the report's summary; raises DatasetError if it found errors.
    """
    source = read_source(config, split)
    report = check_source(source, config.num_classes or None, config.check_images,
                          config.workers)
    print(report.format(max_problems=1000))
    if report.errors:
        raise DatasetError(f"{len(report.errors)} error(s) in {source.name} (listed above)")
    return report.summary()
