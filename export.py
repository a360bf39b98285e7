"""Export the detector with its box decoder: python export.py --ckpt_file CKPT
[--file_name ssd] [--file_format MINDIR|ONNX|AIR] [--batch_size 1] [--device_target CPU]
[--opencv true]

Writes <file_name>.mindir / .onnx / .air. Input (batch, 3, 300, 300) normalised image; outputs
boxes (batch, 8732, 4) and scores (batch, 8732, num_classes). The batch is export.py's own
--batch_size (default 1): a training config's batch_size (--config configs/demo.yaml) is not
taken. With --opencv true an ONNX export is also written as <file_name>.opencv.onnx, the form the
C++ program runs with OpenCV. With --quantize int8 (and the training data, --data_url ..., for
its --calibration_images) it writes the int8 model that eval.py/predict.py --quantize int8 run,
as OpenVINO IR: <file_name>.xml and <file_name>.bin. Config flags (--num_classes, --config ...)
describe the model, as for training. Files are written whole or not at all, readable as the
umask allows; the folder they go into keeps its mode.
"""
import argparse
import sys

from src.cli import run
from src.config import ConfigError


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--ckpt_file", required="-h" not in sys.argv and "--help" not in sys.argv,
                        help="the checkpoint to export")
    parser.add_argument("--file_name", default="ssd", help="output path without its extension")
    parser.add_argument("--file_format", default="MINDIR", type=str.upper,
                        choices=("MINDIR", "ONNX", "AIR"), help="the graph's format")
    parser.add_argument("--opencv", default="false", choices=("true", "false"),
                        help="also write <file_name>.opencv.onnx for the C++ program")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="images per call of the exported graph (1 to 1024)")
    given = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(given)
    explicit_format = any(a == "--file_format" or a.startswith("--file_format=") for a in given)
    if not 1 <= args.batch_size <= 1024:
        parser.error(f"--batch_size {args.batch_size}: an export takes 1 to 1024 images")

    def export(config):
        from src.device import init_device
        from src.infer.deploy import export_model, opencv_compatible

        platform = init_device(config.run_platform, config.device_id, config.seed)
        if config.quantize == "int8":
            if explicit_format:
                raise ConfigError("--quantize int8 exports OpenVINO IR (<file_name>.xml and "
                                  ".bin): leave --file_format out")
            from src.infer.quantize import export_int8

            path = export_int8(config, args.ckpt_file, args.file_name, args.batch_size)
            print(f"Exported {path} (batch {args.batch_size}, int8, OpenVINO IR with its .bin)")
            return
        path = export_model(config, args.ckpt_file, args.file_name, args.file_format,
                            args.batch_size, platform)
        print(f"Exported {path} (batch {args.batch_size}, {args.file_format})")
        if args.opencv == "true":
            if args.file_format != "ONNX":
                raise ConfigError("--opencv true needs --file_format ONNX")
            print(f"OpenCV form: {opencv_compatible(path, args.file_name + '.opencv.onnx')}")

    return run(export, __doc__, rest, what="export.py",
               kept="nothing was written (an export appears under its name only once complete)",
               own=parser)


if __name__ == "__main__":
    sys.exit(main())
