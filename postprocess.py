"""COCO mAP of the C++ program's result files:
python postprocess.py --result_path result_Files --img_path IMAGES --anno_file GT.json [--drop]

Reads <stem>_0.bin (boxes) and <stem>_1.bin (scores) for every image of --img_path listed in
--anno_file (matched by file name, so any names work; <stem> is the file name without its last
extension: shot.1.jpg -> shot.1_0.bin, as the C++ program writes them), runs eval.py's
post-processing and COCOeval. Two images that would share result files (a.jpg and a.png) are
refused; annotated images absent from --img_path are counted and named, not scored. --drop
scores only images without crowd boxes and with at least one box (the reference's protocol;
same as --drop_crowd). Outputs go to --output_dir (outputs/postprocess).
"""
import argparse
import sys
from typing import Optional

from src.cli import run


def main(argv: Optional[list] = None) -> int:
    helping = "-h" in sys.argv or "--help" in sys.argv
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, text in (("--result_path", "the C++ program's result folder"),
                       ("--img_path", "the images it ran on"),
                       ("--anno_file", "their COCO annotation file")):
        parser.add_argument(flag, required=not helping, help=text)
    parser.add_argument("--drop", action="store_true",
                        help="the reference's protocol: only images without crowd boxes")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.drop:
        rest = [*rest, "--drop_crowd", "true"]
    def score(config):
        from src.infer.evaluator import evaluate_result_files

        return evaluate_result_files(config, args.result_path, args.img_path, args.anno_file)

    return run(score, __doc__, rest, what="postprocess.py",
               default_output_dir="outputs/postprocess",
               kept="none of its results are in {output_dir} (they are written once scored; an "
                    "earlier run's are as they were)",
               own=parser)


if __name__ == "__main__":
    sys.exit(main())
