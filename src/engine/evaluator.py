"""Evaluation: checkpoint -> inference over the eval set -> post-processing -> COCOeval."""
import json
import os
import shutil
import time

import numpy as np
import mindspore as ms

from src.anchors import default_boxes_from_config
from src.data.pipeline import create_eval_dataset
from src.data.sources import prepare_split
from src.detections import PostProcessor
from src.device import start_run
from src.engine.checkpoint import load_weights
from src.engine.progress import Progress
from src.metrics import coco_evaluate, stats_dict
from src.model import SsdInferWithDecoder, build_ssd

DEFAULT_OUTPUT_DIR = os.path.join("outputs", "eval")


def build_inference_network(config, checkpoint_path=None):
    """Detector + in-graph decoder in eval mode, weights from ``checkpoint_path`` if given."""
    network = build_ssd(config)
    if checkpoint_path:
        load_weights(network, checkpoint_path)
    net = SsdInferWithDecoder(network, default_boxes_from_config(config).cyxhw,
                              config.prior_scaling)
    net.set_train(False)
    return net


def run_inference(net, dataset, batch_size, postprocessor, progress="auto", desc="eval"):
    """Detections (COCO records) and image ids of every image of an eval dataset.

    Batches are streamed: only the detections are kept, never the raw 8732 x C scores. A short
    last batch is padded to ``batch_size`` so one compiled graph serves every batch.
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
    bar.close()
    return detections, img_ids


def evaluate(config):
    """eval.py: score ``config.checkpoint_path`` on the eval split; prints and returns results."""
    if not config.checkpoint_path:
        raise ValueError("no checkpoint given: pass --checkpoint_path FILE")
    output_dir, platform = start_run(config, DEFAULT_OUTPUT_DIR)
    prepared = prepare_split(config, "eval", output_dir)
    source, files = prepared.source, prepared.files
    net = build_inference_network(config, config.checkpoint_path)
    dataset = create_eval_dataset(files, config.eval_batch_size, config.img_shape,
                                  config.num_parallel_workers)
    postprocessor = PostProcessor.from_config(config, source.category_ids)
    print(f"Evaluating {config.checkpoint_path} on {dataset.get_dataset_size()} batches of "
          f"{source.name} ({platform}, batch {config.eval_batch_size})", flush=True)
    start = time.time()
    detections, img_ids = run_inference(net, dataset, config.eval_batch_size, postprocessor,
                                        config.progress)
    seconds = time.time() - start
    detections_path = os.path.join(output_dir, "detections.json")
    if config.dataset != "coco":
        shutil.copyfile(prepared.ground_truth, os.path.join(output_dir, "ground_truth.json"))
    stats, summary = coco_evaluate(prepared.ground_truth, detections, img_ids, detections_path)
    print(summary, end="")
    print("=" * 79)
    print(f"mAP: {stats[0]}", flush=True)
    results = {"checkpoint": os.path.abspath(config.checkpoint_path),
               "ground_truth": os.path.abspath(prepared.ground_truth),
               "images": len(img_ids), "detections": len(detections),
               "seconds": round(seconds, 2), "mAP": float(stats[0]), **stats_dict(stats)}
    with open(os.path.join(output_dir, "eval_results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"{len(img_ids)} images in {seconds:.1f} s; detections: {detections_path}; "
          f"results: {os.path.join(output_dir, 'eval_results.json')}")
    return results
