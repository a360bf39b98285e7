"""Train SSD-ResNet34: python train.py --dataset coco --data_url COCO_ROOT [--config FILE] [...]

Every config key is a flag (see --help); the reference's flags keep their meaning.
"""
import sys

import src  # noqa: F401  (caps oneDNN's ISA before MindSpore loads)
from src.cli import run
from src.engine.trainer import train

if __name__ == "__main__":
    sys.exit(run(train, __doc__))
