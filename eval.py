"""Evaluate a checkpoint with COCO mAP: python eval.py --data_url COCO_ROOT --checkpoint_path CKPT

Prints COCOeval's 12-line summary (--coco_evaluator) and 'mAP: <value>'; writes detections.json
and eval_results.json into --output_dir (default outputs/eval).
"""
import sys

from src.cli import run

if __name__ == "__main__":
    sys.exit(run("src.infer.evaluator:evaluate", __doc__, what="eval.py",
                 default_output_dir="outputs/eval",
                 kept="none of its results are in {output_dir} (they are written once every "
                      "image is scored; an earlier run's are as they were)"))
