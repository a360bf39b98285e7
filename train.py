"""Train SSD-ResNet34: python train.py --dataset coco --data_url COCO_ROOT [--config FILE] [...]

Every config key is a flag (see --help); the reference's flags keep their meaning.
"""
import sys

from src.cli import run

if __name__ == "__main__":
    sys.exit(run("src.train.trainer:train", __doc__, what="train.py",
                 default_output_dir="outputs/train",
                 kept="{output_dir} keeps its config.yaml and the checkpoints saved so far; a "
                      "MindRecord conversion under way is removed. Run the same command again "
                      "(with --resume auto once a checkpoint is there)"))
