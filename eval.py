"""Evaluate a checkpoint with COCO mAP: python eval.py --data_url COCO_ROOT --checkpoint_path CKPT

Prints pycocotools' 12-line summary and 'mAP: <value>'; writes detections.json and
eval_results.json into --output_dir (default outputs/eval).
"""
import sys

import src  # noqa: F401  (caps oneDNN's ISA before MindSpore loads)
from src.cli import run
from src.engine.evaluator import evaluate

if __name__ == "__main__":
    sys.exit(run(evaluate, __doc__))
