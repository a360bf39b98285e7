"""Draw detections on images and videos: python predict.py --checkpoint_path CKPT
--image FILE_FOLDER_OR_PATTERN [MORE ...] [--recursive true] [--output_dir DIR]
[--run_platform CPU] [--draw_threshold 0.5] [--num_classes N --classes ...]

--image takes image files (jpg, png, bmp), videos (mp4, avi, mkv, mov), folders (their images
and videos; with --recursive true their subfolders' too) and glob patterns ('shots/*.jpg',
quoted; '**' with --recursive). Images and video frames go through the network
--eval_batch_size at a time, with a progress bar.

Writes each image with boxes, class names and scores drawn, under the input's own file name
and in its format (a.jpg gives a.jpg, a.png gives a.png; a folder's subfolders are kept), each
video as an annotated video of the same name, frame count and frame rate, and detections.json
(COCO result records, boxes as [x, y, w, h] in pixels, with file_name, class and, for a video,
frame) into --output_dir (default outputs/predict), which must not be the folder of the inputs.
Pixels are taken as stored: EXIF orientation is ignored, as in training and evaluation.
"""
import argparse
import sys
from typing import Optional

from src.cli import run


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--image", nargs="+",
                        required="-h" not in sys.argv and "--help" not in sys.argv,
                        help="image files, videos, folders or glob patterns (see above)")
    parser.add_argument("--draw_threshold", type=float, default=0.5,
                        help="draw detections scoring above this (all above --min_score go "
                             "into detections.json)")
    parser.add_argument("--recursive", choices=("true", "false"), default="false",
                        help="folders' subfolders too, and '**' in patterns")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not 0 <= args.draw_threshold <= 1:
        parser.error("--draw_threshold must be within 0..1")
    def predict(config):
        from src.infer.predictor import predict as draw

        return draw(config, args.image, args.draw_threshold, args.recursive == "true")

    return run(predict, __doc__, rest, what="predict.py", default_output_dir="outputs/predict",
               kept="the pictures finished so far are in {output_dir}; detections.json is "
                    "written at the end, so it is not there (or is the earlier run's)",
               own=parser)


if __name__ == "__main__":
    sys.exit(main())
