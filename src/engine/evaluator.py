"""Evaluation: checkpoint -> inference over the eval set -> post-processing -> COCOeval."""
import os
import shutil
import time

import numpy as np
import mindspore as ms

from src.anchors import default_boxes_from_config
from src.data.pipeline import create_eval_dataset
from src.data.sources import prepare_split, with_data_classes
from src.detections import PostProcessor
from src.cpu import cpu_info
from src.device import save_run_config, start_run
from src.engine.checkpoint import load_weights
from src.engine.progress import Progress
from src.metrics import (coco_evaluate, load_coco_ground_truth, per_class_table,
                         reference_protocol_images, stats_dict, write_json_atomic)
from src.visualize import plot_pr_curves
from src.model import SsdInferWithDecoder, build_ssd, conv_description
from src.model.fold import fold_batch_norm

DEFAULT_OUTPUT_DIR = os.path.join("outputs", "eval")


def build_inference_network(config, checkpoint_path=None, conv_impl=None, conv_dtype=None,
                            fold_bn=True):
    """Detector + in-graph decoder in eval mode, weights from ``checkpoint_path`` if given.

    With our CPU convolutions and ``fold_bn``, BatchNorm is folded into the convolutions
    (``src.model.fold``): pass False for a network whose parameters will be replaced later.
    """
    network = build_ssd(config, conv_impl, conv_dtype)
    if checkpoint_path:
        load_weights(network, checkpoint_path)
    net = SsdInferWithDecoder(network, default_boxes_from_config(config).cyxhw,
                              config.prior_scaling)
    net.set_train(False)
    if fold_bn:
        fold_batch_norm(network)
    return net


def run_inference(net, dataset, batch_size, postprocessor, progress="auto", desc="eval",
                  on_batch=None):
    """Detections (COCO records) and image ids of every image of an eval dataset.

    Batches are streamed: only the detections are kept, never the raw 8732 x C scores. A short
    last batch is padded to ``batch_size`` so one compiled graph serves every batch.
    ``on_batch(images_done)`` is called after each batch.
    """
    detections, img_ids = [], []
    bar = Progress(dataset.get_dataset_size(), desc, progress)
    for batch in dataset.create_dict_iterator(output_numpy=True, num_epochs=1):
        images, count = batch["image"], len(batch["image"])
        if count < batch_size:
            padding = np.zeros((batch_size - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, padding])
        boxes, scores = net(ms.Tensor(images))
        ids = batch["img_id"].ravel()
        detections.extend(postprocessor.process_batch(ids, boxes.asnumpy()[:count],
                                                      scores.asnumpy()[:count],
                                                      batch["image_shape"]))
        img_ids.extend(int(i) for i in ids)
        bar.update(detections=len(detections))
        if on_batch:
            on_batch(len(img_ids))
    bar.close()
    return detections, img_ids


def score_and_report(config, ground_truth_path, detections, img_ids, output_dir, source_note):
    """COCOeval of detections (on all images, or the reference's subset with --drop_crowd),
    printed (12 lines, per-class table, 'mAP: <value>') and written to ``output_dir``:
    detections.json, eval_results.json, pr_curve.png. Returns the results dict."""
    ground_truth = load_coco_ground_truth(ground_truth_path)
    if config.drop_crowd:
        scored = reference_protocol_images(ground_truth, img_ids)
        print(f"--drop_crowd: scoring {len(scored)} of {len(img_ids)} images (those without "
              "crowd boxes and with at least one box), as the reference did")
        img_ids = scored
    result = coco_evaluate(ground_truth, detections, img_ids,
                           os.path.join(output_dir, "detections.json"))
    print(result.summary, end="")
    if result.per_class:
        print(per_class_table(result))
    print("=" * 79)
    print(f"mAP: {result.stats[0]}", flush=True)
    curve = plot_pr_curves(result, os.path.join(output_dir, "pr_curve.png"))
    results = {**source_note, "ground_truth": os.path.abspath(ground_truth_path),
               "images": len(img_ids), "detections": len(detections),
               "mAP": float(result.stats[0]), **stats_dict(result.stats),
               "per_class": {str(k): v for k, v in result.per_class.items()}}
    write_json_atomic(results, os.path.join(output_dir, "eval_results.json"))
    print(f"Written to {output_dir}: detections.json, eval_results.json"
          f"{', pr_curve.png' if curve else ''}")
    return results


def evaluate(config):
    """eval.py: score ``config.checkpoint_path`` on the eval split; prints and returns results."""
    if not config.checkpoint_path:
        raise ValueError("no checkpoint given: pass --checkpoint_path FILE")
    run = start_run(config, DEFAULT_OUTPUT_DIR)
    output_dir, platform = run.output_dir, run.platform
    prepared = prepare_split(config, "eval", output_dir)
    config = with_data_classes(config, prepared.source)
    save_run_config(config, run)
    net = build_inference_network(config, config.checkpoint_path)
    dataset = create_eval_dataset(prepared.files, config.eval_batch_size, config.img_shape,
                                  config.num_parallel_workers)
    postprocessor = PostProcessor.from_config(config, prepared.source.category_ids)
    print(f"Evaluating {config.checkpoint_path} on {prepared.images} images of "
          f"{prepared.source.name} ({platform}, batch {config.eval_batch_size}, convolutions: "
          f"{conv_description(net)})", flush=True)
    if platform == "CPU":
        print(f"CPU: {cpu_info().describe()}", flush=True)
    start = time.time()
    detections, img_ids = run_inference(net, dataset, config.eval_batch_size, postprocessor,
                                        config.progress)
    seconds = time.time() - start
    print(f"{len(img_ids)} images in {seconds:.1f} s")
    shutil.copyfile(prepared.ground_truth, os.path.join(output_dir, "ground_truth.json"))
    return score_and_report(config, prepared.ground_truth, detections, img_ids, output_dir,
                            {"checkpoint": os.path.abspath(config.checkpoint_path),
                             "seconds": round(seconds, 2)})


def evaluate_result_files(config, result_path, img_path, anno_file):
    """postprocess.py: COCO mAP of the C++ program's <stem>_0.bin / <stem>_1.bin files.

    Images are the files of ``img_path`` that the annotation file lists (matched by
    ``file_name``, so any names work); sizes are read from the images. The same
    post-processing as eval.py runs on the stored boxes and scores.
    """
    from PIL import Image

    output_dir = config.output_dir or os.path.join("outputs", "postprocess")
    os.makedirs(output_dir, exist_ok=True)
    ground_truth = load_coco_ground_truth(anno_file)
    by_name = {os.path.basename(image["file_name"]): image["id"]
               for image in ground_truth.dataset["images"]}
    category_ids = [0] + sorted(ground_truth.getCatIds())
    postprocessor = PostProcessor.from_config(config, category_ids)
    anchors = config.num_ssd_boxes
    detections, img_ids, unknown = [], [], []
    for name in sorted(os.listdir(img_path)):
        path = os.path.join(img_path, name)
        if not os.path.isfile(path) or name.startswith("."):
            continue
        if name not in by_name:
            unknown.append(name)
            continue
        stem = name.split(".")[0]
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
        img_id = by_name[name]
        detections.extend(postprocessor.process_batch([img_id], boxes.reshape(1, anchors, 4),
                                                      scores[None], [size]))
        img_ids.append(img_id)
    if unknown:
        print(f"{len(unknown)} file(s) of {img_path} are not in {anno_file} and were left out, "
              f"e.g. {unknown[0]}")
    if not img_ids:
        raise ValueError(f"none of the files in {img_path} is listed in {anno_file}")
    return score_and_report(config, anno_file, detections, img_ids, output_dir,
                            {"result_path": os.path.abspath(result_path)})
