"""Train SSD-ResNet34: python train.py --dataset coco --data_url COCO_ROOT [--config FILE] [...]

Every config key is a flag (see --help); the reference's flags keep their meaning.
"""
import sys

from src.cli import run

if __name__ == "__main__":
    sys.exit(run("src.engine.trainer:train", __doc__))
