"""Draw detections on images: python predict.py --checkpoint_path CKPT --image FILE_OR_FOLDER
[MORE ...] [--output_dir DIR] [--run_platform CPU] [--draw_threshold 0.5]
[--num_classes N --classes ...]

Writes each image with boxes, class names and scores drawn (<name>.jpg: the input's whole file
name plus .jpg, so a.jpg and a.png give a.jpg.jpg and a.png.jpg) and detections.json (COCO
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

    return run(predict, __doc__, rest)


if __name__ == "__main__":
    sys.exit(main())
