"""Measure speed and memory: python benchmark.py --mode train|infer|eval|data|postprocess|all
(all: those five), or --mode epochs [--epochs 30]: resident memory across that many one-step
epochs of the real training loop and its growth per epoch, or --mode overfit
[--overfit_steps 400]: from random weights, 8 generated images trained as one batch until AP50
on them reaches 0.9 (overfit_ap50, overfit_ap, overfit_steps, overfit_seconds).

--batch_size (default 8 here), --steps, --warmup and --device_target as usual; any config flag
works (e.g. --data_url ROOT for the data and eval modes on your own COCO-layout data,
--checkpoint_path for trained weights, --conv_dtype bfloat16). --eval_images N: generated val
images for the eval mode's memory reading (default 40, the demo's val set); the eval mode also
runs evaluation's worst case (an untrained 81-class model: 8,000 detections an image) at
--stress_images N1,N2,... images (default 50,200; COCO val is 5000), one 'eval_stress' line
each: post-processing, json and COCOeval time per image and peak memory.
--twin PATH/torch_twin.py [--twin_python PY]: run the PyTorch twin right after, with the same
batch, steps and threads, and print the ratios. --peers onnxruntime,openvino (infer mode): the
same weights exported to ONNX and run by those engines with as many threads and, where the
engine offers it, --conv_dtype's arithmetic, batch 1 and 8 (peer_<name>_bs1_ms,
peer_<name>_bs8_img_per_s, peer_<name>_precision, bs1/bs8_speedup_vs_<name>). --peers
torchvision (postprocess mode, where torch and torchvision are installed): the detection step
beside torchvision.ops.batched_nms on the same candidates, both with torchvision's IoU
(peer_torchvision_ms_per_image, postprocess_exact_iou_ms_per_image, speedup_vs_torchvision,
peer_torchvision_detections_differing). --int8 true (infer mode): also the int8 model of the
same weights (--quantize int8: NNCF, OpenVINO; calibrated on --calibration_images images of the
configured training data, or of generated demo data): int8_bs1_ms, int8_bs8_img_per_s,
int8_speedup_bs8 (over our float32 in the same run), int8_backend. Prints one JSON line per
mode.
"""
import argparse
import importlib.util
import os
import sys

from src.cli import parse_runnable_config, run_interruptible
from src.measure import (  # imports MindSpore only inside its functions
    ALL_MODES,
    INFER_PEERS,
    MODES,
    POSTPROCESS_PEERS,
    run,
)

# What to install for each peer (torchvision's CPU wheels: add
# --index-url https://download.pytorch.org/whl/cpu).
PEER_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino",
                 "torchvision": "torch torchvision"}


def main(argv=None):
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--mode", default="all", choices=(*MODES, "all"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--eval_images", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--stress_images", default="50,200")
    parser.add_argument("--overfit_steps", type=int, default=400)
    parser.add_argument("--twin", default=None)
    parser.add_argument("--twin_python", default="python3")
    parser.add_argument("--peers", default="")
    parser.add_argument("--int8", default="false", choices=("true", "false"))
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        stress = tuple(int(n) for n in args.stress_images.split(","))
    except ValueError:
        stress = ()
    if not stress or min(stress) < 1:
        parser.error(f"--stress_images {args.stress_images!r}: expected image counts >= 1, "
                     "comma-separated (e.g. 50,200)")
    if (args.steps < 1 or args.warmup < 0 or args.eval_images < 1 or args.epochs < 2
            or args.overfit_steps < 1):
        parser.error("--steps, --eval_images and --overfit_steps must be >= 1, --epochs >= 2, "
                     "--warmup >= 0")
    peers = tuple(p for p in args.peers.split(",") if p)
    modes = ALL_MODES if args.mode == "all" else (args.mode,)
    for peer in peers:
        mode = "infer" if peer in INFER_PEERS else "postprocess"
        if peer not in INFER_PEERS + POSTPROCESS_PEERS:
            parser.error(f"--peers {args.peers}: {peer} unknown; expected onnxruntime and/or "
                         "openvino (--mode infer), torchvision (--mode postprocess), "
                         "comma-separated")
        if mode not in modes:
            parser.error(f"--peers {peer} is a peer of --mode {mode}, not of --mode {args.mode}")
        if importlib.util.find_spec(peer) is None:
            parser.error(f"--peers {peer}: the package {peer} is not installed in "
                         f"{sys.executable}'s environment (pip install {PEER_PACKAGES[peer]})")
    if args.int8 == "true" and "infer" not in modes:
        parser.error(f"--int8 true measures the int8 model in --mode infer, not --mode {args.mode}")
    if args.twin and not os.path.isfile(args.twin):
        parser.error(f"--twin {args.twin}: no such file")
    config = parse_runnable_config(rest, __doc__, overrides={"batch_size": 8})

    def work() -> int:
        run(config, modes, args.steps, args.warmup, args.twin, args.twin_python,
            args.eval_images, args.epochs, stress, args.overfit_steps, peers,
            args.int8 == "true")
        return 0

    return run_interruptible(work, "benchmark.py", "the JSON lines printed so far are the modes "
                             "measured; the mode under way printed none")


if __name__ == "__main__":
    sys.exit(main())
