"""eval.py and postprocess.py: a checkpoint, or the C++ program's result files, scored with
COCO mAP (``src.infer.evaluation``)."""
import os
import time

import numpy as np

from src.config import Config
from src.cpu import cpu_info
from src.data.sources import prepare_split, with_data_classes
from src.detections import PostProcessor
from src.device import save_run_config, start_run
from src.files import copy_atomic
from src.infer.evaluation import Evaluation, score_and_report
from src.metrics import load_coco_ground_truth
from src.model.metadata import (
    check_inference_boxes,
    checkpoint_class_count,
    describe_checkpoint_classes,
)
from src.model.weights import CheckpointError
from src.text import listed

DEFAULT_OUTPUT_DIR = os.path.join("outputs", "eval")


def checkpoint_classes(config: Config, path: str) -> tuple:
    """(``config`` with the checkpoint's class count, a description of where it came from for
    the data check's message, '' when the checkpoint does not say). eval.py scores a
    checkpoint with the class count it was trained for: ``--num_classes`` may only repeat it,
    and data with another count is refused naming both (no flag of eval.py changes a
    checkpoint's class head)."""
    check_inference_boxes(config, path)
    count = checkpoint_class_count(config, path) if os.path.isfile(path) else None
    if count is None:
        return config, ""
    trained = describe_checkpoint_classes(path, count)
    if config.num_classes and config.num_classes != count:
        raise CheckpointError(
            f"--num_classes {config.num_classes}, but {trained}: eval.py scores a checkpoint "
            "with the class count it was trained for. Leave --num_classes out (it is read from "
            "the checkpoint)")
    if not config.num_classes:
        print(f"num_classes {count}: from the checkpoint {path}", flush=True)
    return config.replace(num_classes=count), trained


def evaluate(config: Config) -> dict:
    """eval.py: score ``config.checkpoint_path`` on the eval split; prints and returns results."""
    if not config.checkpoint_path:
        raise ValueError("no checkpoint given: pass --checkpoint_path FILE")
    config, classes_of = checkpoint_classes(config, config.checkpoint_path)
    run = start_run(config, DEFAULT_OUTPUT_DIR)
    output_dir, platform = run.output_dir, run.platform
    prepared = prepare_split(config, "eval", output_dir, classes_of=classes_of)
    config = with_data_classes(config, prepared.source)
    save_run_config(config, run)
    evaluation = Evaluation(config, prepared, config.checkpoint_path, backend=config.backend)
    print(f"Evaluating {config.checkpoint_path} on {evaluation.images} images of "
          f"{prepared.source.name} ({platform}, batch {config.eval_batch_size}, "
          f"{evaluation.detector.describe()})", flush=True)
    if platform == "CPU":
        print(f"CPU: {cpu_info().describe()}", flush=True)
    start = time.time()
    detections = evaluation.infer()
    seconds = time.time() - start
    print(f"{detections.image_count} images in {seconds:.1f} s ({len(detections)} detections)")
    copy_atomic(prepared.ground_truth, os.path.join(output_dir, "ground_truth.json"))
    return evaluation.score(detections, output_dir,
                            {"checkpoint": os.path.abspath(config.checkpoint_path),
                             "seconds": round(seconds, 2)})


def evaluate_result_files(config: Config, result_path: str, img_path: str, anno_file: str) -> dict:
    """postprocess.py: COCO mAP of the C++ program's <stem>_0.bin / <stem>_1.bin files.

    Images are the files of ``img_path`` that the annotation file lists (matched by the base
    name of ``file_name``, so any names work); an image's results are ``<stem>_0.bin`` and
    ``<stem>_1.bin`` with ``<stem>`` its file name without the last extension
    (``os.path.splitext``: ``shot.1.jpg`` -> ``shot.1_0.bin``, as the C++ program names them).
    Two files that would share result files (``a.jpg`` and ``a.png``), or two annotation
    records of the same base name, are refused, naming both.
    Sizes are read from the images as stored (PIL; EXIF orientation ignored, as evaluation
    does). It prints how many annotated images were scored and names those absent from
    ``img_path`` (they are left out of the score). The same post-processing as eval.py runs on
    the stored boxes and scores.
    """
    from PIL import Image

    cpp_image_suffixes = (".jpg", ".jpeg", ".png", ".bmp")   # what ascend310_infer/ reads
    output_dir = config.output_dir or os.path.join("outputs", "postprocess")
    os.makedirs(output_dir, exist_ok=True)
    ground_truth = load_coco_ground_truth(anno_file)
    by_name: dict = {}
    records: dict = {}
    for image in ground_truth.dataset["images"]:
        name = os.path.basename(image["file_name"])
        if name in by_name:
            raise ValueError(f"{anno_file}: images {by_name[name]} ({records[name]}) and "
                             f"{image['id']} ({image['file_name']}) have the same file name "
                             f"{name}: the files of one --img_path folder cannot tell them apart")
        by_name[name], records[name] = image["id"], image["file_name"]
    category_ids = [0] + sorted(ground_truth.getCatIds())
    postprocessor = PostProcessor.from_config(config, category_ids)
    anchors = config.num_ssd_boxes
    names = sorted(name for name in os.listdir(img_path)
                   if not name.startswith(".") and os.path.isfile(os.path.join(img_path, name)))
    by_stem: dict = {}
    for name in names:
        if name in by_name or name.lower().endswith(cpp_image_suffixes):
            stem = os.path.splitext(name)[0]
            if stem in by_stem:
                raise ValueError(
                    f"{img_path}: {by_stem[stem]} and {name} would share the result files "
                    f"{stem}_0.bin / {stem}_1.bin (named by the file name without its last "
                    f"extension); rename one of them")
            by_stem[stem] = name
    detections, unknown = postprocessor.new_store(), []
    for name in names:
        path = os.path.join(img_path, name)
        if name not in by_name:
            unknown.append(name)
            continue
        stem = os.path.splitext(name)[0]
        files = [os.path.join(result_path, f"{stem}_{k}.bin") for k in (0, 1)]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"{name}: result file {missing[0]} not found (run the C++ program "
                             f"on {img_path} first)")
        boxes = np.fromfile(files[0], np.float32)
        scores = np.fromfile(files[1], np.float32)
        if boxes.size != anchors * 4 or scores.size % anchors:
            raise ValueError(f"{files[0]} / {files[1]}: {boxes.size} and {scores.size} floats do "
                             f"not hold ({anchors}, 4) boxes and ({anchors}, C) scores")
        scores = scores.reshape(anchors, -1)
        if scores.shape[1] != len(category_ids):
            raise ValueError(f"{files[1]}: {scores.shape[1]} score columns, but {anno_file} has "
                             f"{len(category_ids) - 1} categories (+ background)")
        with Image.open(path) as image:
            size = (image.height, image.width)
        postprocessor.process_batch([by_name[name]], boxes.reshape(1, anchors, 4),
                                    scores[None], [size], detections)
    if unknown:
        print(f"{len(unknown)} file(s) of {img_path} are not in {anno_file} and were left out, "
              f"e.g. {unknown[0]}")
    if not detections.image_count:
        raise ValueError(f"none of the files in {img_path} is listed in {anno_file}")
    present = set(names)
    absent = sorted(records[name] for name in by_name if name not in present)
    if absent:
        print(f"Scored {detections.image_count} of the {len(by_name)} images of {anno_file}; "
              f"{len(absent)} not in {img_path} are left out of the score: {listed(absent)}")
    else:
        print(f"Scored all {detections.image_count} images of {anno_file}")
    return score_and_report(config, anno_file, detections, output_dir,
                            {"result_path": os.path.abspath(result_path)})
