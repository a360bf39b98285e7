"""Measure speed and memory: python benchmark.py --mode train|infer|data|postprocess|all

--batch_size (default 8 here), --steps, --warmup and --device_target as usual; any config flag
works (e.g. --data_url ROOT for the data mode on your own COCO-layout data, --checkpoint_path
for inference with trained weights). Prints one JSON line per mode.
"""
import argparse
import sys

import src  # noqa: F401  (caps oneDNN's ISA before MindSpore loads)
from src.config import parse_config
from src.measure import MODES, run


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--mode", default="all", choices=(*MODES, "all"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    config = parse_config(rest, __doc__, overrides={"batch_size": 8})
    run(config, MODES if args.mode == "all" else (args.mode,), args.steps, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
