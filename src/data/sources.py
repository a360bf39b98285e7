"""From a Config to a dataset's records and its MindRecord set."""
import os

from src.data.coco import read_coco
from src.data.mindrecord import ensure_set
from src.data.records import DatasetError

MINDRECORD_PREFIX = {"train": "ssd.mindrecord", "eval": "ssd_eval.mindrecord"}


def read_source(config, split):
    """Records of the 'train' or 'eval' split of the configured dataset."""
    if config.dataset != "coco":
        raise DatasetError(f"--dataset {config.dataset}: only COCO-layout data is supported so "
                           "far; VOC and the TXT format are planned (see README, Roadmap)")
    if not config.coco_root:
        raise DatasetError("no dataset given: pass --data_url ROOT (a COCO-layout folder with "
                           "annotations/ and train2017/, val2017/)")
    name = config.train_data_type if split == "train" else config.val_data_type
    source = read_coco(config.coco_root, name, config.instances_set)
    if source.num_classes != config.num_classes:
        raise DatasetError(
            f"{source.annotation_file} has {source.num_classes - 1} categories "
            f"({source.num_classes} classes with background) but num_classes is "
            f"{config.num_classes}: pass --num_classes {source.num_classes}")
    return source


def prepare_split(config, split, output_dir, progress=True, log=print):
    """Read a split and make sure its MindRecord set exists; returns (source, shard files)."""
    source = read_source(config, split)
    directory = config.mindrecord_dir or os.path.join(output_dir, "mindrecord")
    files = ensure_set(source, directory, MINDRECORD_PREFIX[split], config.mindrecord_shards,
                       progress=progress, log=log)
    return source, files
