"""predict.py: detections drawn on images, plus a json of them, from a checkpoint."""
import os

import cv2
import mindspore as ms

from src.data.transforms import network_input
from src.detections import PostProcessor
from src.device import start_run
from src.engine.checkpoint import read_class_names, with_checkpoint_classes
from src.files import write_json
from src.model import build_inference_network
from src.visualize import draw_detections

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_OUTPUT_DIR = os.path.join("outputs", "predict")


def list_images(path: str) -> list:
    """The image files a --image argument names: one file, or a folder's images (sorted)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if n.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise ValueError(f"--image {path}: the folder has no {'/'.join(IMAGE_SUFFIXES)} files")
        return files
    if not os.path.isfile(path):
        raise ValueError(f"--image {path}: no such file or folder")
    return [path]


def class_names_for(config) -> list:
    """--classes, else the names stored in the checkpoint, else class_1, class_2 ..."""
    if config.classes:
        return tuple(config.classes)
    stored = read_class_names(config.checkpoint_path)
    if stored and len(stored) == config.num_classes:
        return stored
    return ("background",) + tuple(f"class_{i}" for i in range(1, config.num_classes))


def predict(config, image_path: str, draw_threshold: float = 0.5) -> dict:
    """Detect objects in one image or a folder; writes <stem>.jpg pictures and detections.json.

    Every detection above ``min_score`` (after NMS) goes into the json, as eval.py's COCO
    result records (``image_id`` = the image's position, 1-based; ``category_id`` = the class
    index) plus ``file_name`` and ``class``; those above ``draw_threshold`` are drawn. Returns
    {file name: its records}.
    """
    if not config.checkpoint_path:
        raise ValueError("no checkpoint given: pass --checkpoint_path FILE")
    files = list_images(image_path)
    run = start_run(config, DEFAULT_OUTPUT_DIR)
    output_dir, platform = run.output_dir, run.platform
    config = with_checkpoint_classes(config, config.checkpoint_path)
    names = class_names_for(config)
    net = build_inference_network(config, config.checkpoint_path)
    postprocessor = PostProcessor.from_config(config, list(range(config.num_classes)))
    results = {}
    for path in files:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path}: cannot be decoded as an image")
        batch = network_input(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), config.img_shape)[None]
        boxes, scores = net(ms.Tensor(batch))
        found, found_scores, classes = postprocessor.detect(boxes.asnumpy()[0],
                                                            scores.asnumpy()[0],
                                                            image.shape[:2])
        shown = found_scores > draw_threshold
        picture = draw_detections(image, found[shown], found_scores[shown], classes[shown], names)
        stem = os.path.splitext(os.path.basename(path))[0]
        cv2.imwrite(os.path.join(output_dir, f"{stem}.jpg"), picture)
        records = postprocessor.coco_records(len(results) + 1, found, found_scores, classes)
        results[os.path.basename(path)] = [
            {**record, "file_name": os.path.basename(path), "class": names[c]}
            for record, c in zip(records, classes)]
        print(f"{path}: {int(shown.sum())} detections above {draw_threshold} drawn "
              f"({len(found)} above {config.min_score} in the json)", flush=True)
    write_json([r for found in results.values() for r in found],
               os.path.join(output_dir, "detections.json"))
    print(f"Pictures and detections.json ({platform}) in {os.path.abspath(output_dir)}")
    return results
