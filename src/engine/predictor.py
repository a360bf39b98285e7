"""predict.py: detections drawn on images, plus a json of them, from a checkpoint.

Conventions:

* Pixels as stored: images are decoded with their EXIF orientation ignored
  (``cv2.IMREAD_IGNORE_ORIENTATION``), as MindSpore's ``vision.Decode`` in training and
  evaluation, the sizes of the data check and postprocess.py (PIL), and COCO's own ``width`` and
  ``height`` do. Boxes are in that frame and the pictures are drawn in it (a phone photo taken
  upright may show turned on its side).
* Output names: the picture of an input keeps its file name and extension, and its format
  (``a.png`` gives ``a.png``, a PNG; ``a.jpg`` gives ``a.jpg``), so ``a.jpg`` and ``a.png`` stay
  apart; the same file name twice among the inputs is refused. Pictures are written whole or
  not at all (``src.files.atomic_path``).
* Inputs are never written over: an output folder that is the folder of an input, or an output
  file that is an input (a link), is refused before anything is written.
"""
import os

import cv2
import numpy as np

from src.boxes import yxyx_to_xywh
from src.data.transforms import network_input
from src.detections import PostProcessor
from src.device import start_run
from src.engine.backends import create_detector
from src.engine.checkpoint import (
    check_inference_boxes,
    read_class_names,
    with_checkpoint_classes,
)
from src.files import write_atomic, write_json
from src.text import listed
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


def read_image(path: str) -> np.ndarray:
    """The BGR ``uint8`` pixels of ``path`` as stored (EXIF orientation ignored: the module's
    convention); ValueError naming the file if it does not decode."""
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return image


def picture_name(path: str) -> str:
    """The output picture's file name for input ``path``: the input's own file name."""
    return os.path.basename(path)


def write_picture(target: str, picture: np.ndarray, source: str) -> str:
    """``picture`` encoded in the format of ``target``'s extension, written atomically."""
    extension = os.path.splitext(target)[1].lower()
    done, encoded = cv2.imencode(extension, picture)
    if not done:
        raise OSError(f"{target}: cannot be encoded as {extension} (the picture of {source})")
    return write_atomic(target, lambda f: f.write(encoded.tobytes()), "wb")


def check_outputs(files: list, output_dir: str) -> None:
    """ValueError, before anything is written, if writing into ``output_dir`` could touch an
    input: the folder holds inputs (the same folder, or a link to it), or one of its output
    files (pictures, detections.json, config.yaml) already is an input file (a link)."""
    folder = os.path.realpath(output_dir)
    for path in files:
        if os.path.realpath(os.path.dirname(os.path.abspath(path))) == folder:
            raise ValueError(
                f"--output_dir {output_dir} is the folder of the input {path}; predict.py "
                f"never writes into its inputs' folder (pictures are named as their inputs, "
                f"plus detections.json and config.yaml): pass another --output_dir")
    inputs = {os.path.realpath(path): path for path in files}
    outputs = [picture_name(path) for path in files] + ["detections.json", "config.yaml"]
    for name in outputs:
        target = os.path.realpath(os.path.join(output_dir, name))
        if target in inputs:
            raise ValueError(f"--output_dir {output_dir}: {os.path.join(output_dir, name)} is "
                             f"the input {inputs[target]} (a link) and would be overwritten: "
                             f"pass another --output_dir")


def class_names_for(config) -> list:
    """--classes, else the names stored in the checkpoint, else class_1, class_2 ..."""
    if config.classes:
        return tuple(config.classes)
    stored = read_class_names(config.checkpoint_path)
    if stored and len(stored) == config.num_classes:
        return stored
    return ("background",) + tuple(f"class_{i}" for i in range(1, config.num_classes))


def predict(config, image_paths, draw_threshold: float = 0.5) -> dict:
    """Detect objects in images (files or folders' images; no file name twice); writes
    pictures named as their inputs and detections.json (the module's conventions: pixels as
    stored, inputs never overwritten).

    Every detection above ``min_score`` (after NMS) goes into the json, as eval.py's COCO
    result records (``image_id`` = the image's position, 1-based; ``category_id`` = the class
    index) plus ``file_name`` and ``class``; those above ``draw_threshold`` are drawn. Returns
    {file name: its records}.
    """
    if not config.checkpoint_path:
        raise ValueError("no checkpoint given: pass --checkpoint_path FILE")
    paths = [image_paths] if isinstance(image_paths, str) else list(image_paths)
    files = [f for path in paths for f in list_images(path)]
    repeated = sorted({os.path.basename(f) for f in files
                       if sum(os.path.basename(g) == os.path.basename(f) for g in files) > 1})
    if repeated:
        raise ValueError(f"--image: {listed(repeated)} named more than once (the pictures are "
                         "named by the file name): give each image once")
    check_outputs(files, config.output_dir or DEFAULT_OUTPUT_DIR)
    check_inference_boxes(config, config.checkpoint_path)
    run = start_run(config, DEFAULT_OUTPUT_DIR)
    output_dir, platform = run.output_dir, run.platform
    config = with_checkpoint_classes(config, config.checkpoint_path)
    names = class_names_for(config)
    detector = create_detector(config, config.checkpoint_path, config.backend)
    postprocessor = PostProcessor.from_config(config, list(range(config.num_classes)))
    results = {}
    for path in files:
        image = read_image(path)
        batch = network_input(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), config.img_shape)[None]
        boxes, scores = detector(batch)
        found, found_scores, classes = postprocessor.detect(boxes[0], scores[0],
                                                            image.shape[:2])
        shown = found_scores > draw_threshold
        picture = draw_detections(image, found[shown], found_scores[shown], classes[shown], names)
        write_picture(os.path.join(output_dir, picture_name(path)), picture, path)
        store = postprocessor.new_store()
        store.add(len(results) + 1, yxyx_to_xywh(found), found_scores, classes)
        records = store.records()
        results[os.path.basename(path)] = [
            {**record, "file_name": os.path.basename(path), "class": names[c]}
            for record, c in zip(records, classes)]
        print(f"{path}: {int(shown.sum())} detections above {draw_threshold} drawn "
              f"({len(found)} above {config.min_score} in the json)", flush=True)
    write_json([r for found in results.values() for r in found],
               os.path.join(output_dir, "detections.json"))
    print(f"Pictures and detections.json ({platform}) in {os.path.abspath(output_dir)}")
    return results
