"""One evaluation: the eval split's dataset, an inference network, the post-processor, COCOeval
and its report. eval.py, evaluation during training and benchmark.py all use it."""
import os
from typing import Callable, Optional

import numpy as np

from src.config import Config
from src.data.pipeline import batches, create_eval_dataset
from src.detection_store import DetectionStore
from src.detections import PostProcessor
from src.files import write_json
from src.infer.backends import create_detector
from src.metrics import (
    coco_evaluate,
    load_coco_ground_truth,
    per_class_table,
    reference_protocol_images,
    stats_dict,
)
from src.progress import Progress
from src.visualize import plot_pr_curves


def score_and_report(config: Config, ground_truth_path: str, detections: DetectionStore,
                     output_dir: str, source_note: dict) -> dict:
    """COCOeval of detections (on the store's images, or the reference's subset with
    --drop_crowd; COCOeval of ``config.coco_evaluator``),
    printed (12 lines, per-class table, 'mAP: <value>') and written to ``output_dir``:
    detections.json, eval_results.json, pr_curve.png. Returns the results dict."""
    img_ids = detections.image_ids
    if config.drop_crowd:
        ground_truth = load_coco_ground_truth(ground_truth_path)
        scored = reference_protocol_images(ground_truth, img_ids)
        print(f"--drop_crowd: scoring {len(scored)} of {len(img_ids)} images (those without "
              "crowd boxes and with at least one box), as the reference did")
        img_ids = scored
    result = coco_evaluate(ground_truth_path, detections, img_ids,
                           os.path.join(output_dir, "detections.json"), config.coco_evaluator)
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
    write_json(results, os.path.join(output_dir, "eval_results.json"))
    print(f"Written to {output_dir}: detections.json, eval_results.json"
          f"{', pr_curve.png' if curve else ''}")
    return results


class Evaluation:
    """Scores a network on one prepared eval split (``src.data.sources.prepare_split``).

    ``checkpoint_path``: weights of the inference network built here; ``fold_bn`` False keeps
    BatchNorm unfolded for a network whose weights are copied in before each use
    (evaluation during training, ``src.model.weights.copy_weights``). ``backend``: the engine
    (``src.infer.backends``); ``net`` is the MindSpore network, None with the ONNX engines.
    """

    def __init__(self, config: Config, prepared, checkpoint_path: Optional[str] = None,
                 fold_bn: bool = True, backend: str = "mindspore"):
        self.config, self.prepared = config, prepared
        self.detector = create_detector(config, checkpoint_path, backend,
                                        config.eval_batch_size, fold_bn)
        self.net = self.detector.net
        self.dataset = create_eval_dataset(prepared.files, config.eval_batch_size,
                                           config.img_shape, config.workers)
        self.postprocessor = PostProcessor.from_config(config, prepared.source.category_ids)

    @property
    def images(self) -> int:
        return self.prepared.images

    def infer(self, desc: str = "eval",
              on_batch: Optional[Callable[[int], None]] = None) -> DetectionStore:
        """The detections of every image of the split.

        Batches are streamed: only the detections are kept (compact: ``DetectionStore``),
        never the raw 8732 x C scores. A
        short last batch is padded to the batch size so one compiled graph serves every
        batch. ``on_batch(images_done)`` is called after each batch.
        """
        batch_size = self.config.eval_batch_size
        detections = self.postprocessor.new_store()
        bar = Progress(self.dataset.get_dataset_size(), desc, self.config.progress)
        for batch in batches(self.dataset, self.prepared.files, dicts=True, output_numpy=True,
                             num_epochs=1):
            images, count = batch["image"], len(batch["image"])
            if count < batch_size:
                padding = np.zeros((batch_size - count, *images.shape[1:]), images.dtype)
                images = np.concatenate([images, padding])
            boxes, scores = self.detector(images)
            self.postprocessor.process_batch(batch["img_id"].ravel(), boxes[:count],
                                             scores[:count], batch["image_shape"], detections)
            bar.update(detections=len(detections))
            if on_batch:
                on_batch(detections.image_count)
        bar.close()
        return detections

    def score(self, detections: DetectionStore, output_dir: str, source_note: dict) -> dict:
        """``score_and_report`` against the split's ground truth."""
        return score_and_report(self.config, self.prepared.ground_truth, detections,
                                output_dir, source_note)

    def __call__(self, output_dir: str, source_note: dict, desc: str = "eval") -> dict:
        """Infer, score, report; returns the results dict (``score_and_report``)."""
        return self.score(self.infer(desc), output_dir, source_note)
