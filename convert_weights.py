"""Convert an ImageNet ResNet-34 checkpoint to a MindSpore backbone checkpoint:
python convert_weights.py --input FILE --output resnet34_backbone.ckpt

FILE: torchvision's resnet34-*.pth (read without running its code), timm's / Hugging Face's
model.safetensors, or a mindcv / MindSpore .ckpt. The output holds the tensors of SSD's
truncated ResNet-34 backbone under the detector's (the reference's) parameter names, for
--pre_trained here or in the reference's scripts; layer4 and the classifier are left out, and
every tensor left out is listed. An existing output is never replaced.
"""
import argparse
import sys

from src.cli import run


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    asked_help = "-h" in sys.argv or "--help" in sys.argv
    parser.add_argument("--input", required=not asked_help)
    parser.add_argument("--output", required=not asked_help)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.output and not args.output.endswith(".ckpt"):
        parser.error(f"--output {args.output}: a MindSpore checkpoint's name ends with .ckpt")

    def convert(config):
        from src.device import init_device
        from src.model import build_ssd
        from src.train.pretrained import convert_backbone

        init_device(config.run_platform, config.device_id, config.seed)
        written, skipped = convert_backbone(build_ssd(config), args.input, args.output)
        print(f"Wrote {args.output}: {len(written)} backbone tensors of {args.input}; "
              f"left out {len(skipped)}:")
        for name, why in sorted(skipped.items()):
            print(f"  {name}: {why}")

    return run(convert, __doc__, rest, overrides={"run_platform": "CPU"},
               what="convert_weights.py",
               kept="nothing was written (--output appears only once complete)")


if __name__ == "__main__":
    sys.exit(main())
