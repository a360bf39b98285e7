"""The configured dataset's reader: COCO json, Pascal VOC xml, a YOLO dataset (data.yaml), or
the TXT format, each giving one ``DatasetSource`` (``src.data.records``)."""
from src.config import Config
from src.data.coco import read_coco
from src.data.records import DatasetError, DatasetSource
from src.data.txt import read_txt
from src.data.voc import read_voc
from src.data.yolo import read_yolo


def read_source(config: Config, split: str) -> DatasetSource:
    """Records of the 'train' or 'eval' split of the configured dataset (not yet checked)."""
    if config.dataset == "coco":
        if not config.coco_root:
            raise DatasetError("no dataset given: pass --data_url ROOT (a COCO-layout folder "
                               "with annotations/ and train2017/, val2017/)")
        name = config.train_data_type if split == "train" else config.val_data_type
        return read_coco(config.coco_root, name, config.instances_set)
    if config.dataset == "voc":
        if not config.voc_root:
            raise DatasetError("no dataset given: pass --data_url ROOT (a VOC-layout folder "
                               "with Annotations/ and JPEGImages/)")
        name = config.voc_train_set if split == "train" else config.voc_val_set
        return read_voc(config.voc_root, name, config.classes)
    if config.dataset == "yolo":
        if not config.yolo_data:
            raise DatasetError("no dataset given: pass --data_url DIR (a YOLO dataset: the "
                               "folder holding data.yaml, or the file)")
        return read_yolo(config.yolo_data, split, config.classes)
    anno_path = config.anno_path if split == "train" else (config.val_anno_path or
                                                            config.anno_path)
    if not config.image_dir or not anno_path:
        raise DatasetError("--dataset other needs --image_dir DIR and --anno_path FILE")
    return read_txt(config.image_dir, anno_path, config.num_classes, config.classes)
