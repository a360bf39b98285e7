"""Draw detections on images: python predict.py --checkpoint_path CKPT --image FILE_OR_FOLDER
[MORE ...] [--output_dir DIR] [--run_platform CPU] [--draw_threshold 0.5]
[--num_classes N --classes ...]

Writes each image with boxes, class names and scores drawn, under the input's own file name
and in its format (a.jpg gives a.jpg, a.png gives a.png), and detections.json (COCO
result records, boxes as [x, y, w, h] in pixels, with file_name and class) into --output_dir
(default outputs/predict), which must not be the folder of the inputs. Pixels are taken as
stored: EXIF orientation is ignored, as in training and evaluation.
"""
import argparse
import sys
from typing import Optional

from src.cli import run


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--image", nargs="+",
                        required="-h" not in sys.argv and "--help" not in sys.argv)
    parser.add_argument("--draw_threshold", type=float, default=0.5)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not 0 <= args.draw_threshold <= 1:
        parser.error("--draw_threshold must be within 0..1")
    def predict(config):
        from src.engine.predictor import predict as draw

        return draw(config, args.image, args.draw_threshold)

    return run(predict, __doc__, rest, what="predict.py", default_output_dir="outputs/predict",
               kept="the pictures finished so far are in {output_dir}; detections.json is "
                    "written at the end, so it is not there (or is the earlier run's)")


if __name__ == "__main__":
    sys.exit(main())
