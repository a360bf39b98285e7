"""The stages of ``make check-aarch64``, run inside the emulated arm64 root by
scripts/check_aarch64.sh (also runnable on a real arm64 host after ``make setup``).

Each stage prints its time; the first failure ends the run with status 1. Under emulation the
times say nothing about arm64 speed, only that each stage completes.
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def stage(name):
    """Decorator: run the function, which returns (summary, result), as a named, timed stage
    that prints the summary and returns the result."""
    def wrap(function):
        def run(*args):
            start = time.monotonic()
            print(f"-- {name} ...", flush=True)
            summary, result = function(*args)
            print(f"   ok in {time.monotonic() - start:.1f} s: {summary}", flush=True)
            return result
        return run
    return wrap


def python(*args, timeout=3600):
    """A module or script of the project in a fresh interpreter; its output on failure."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"FAILED: python {' '.join(args)} (exit {result.returncode})\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result.stdout


@stage("the interpreter is arm64")
def check_machine():
    machine = platform.machine()
    if machine != "aarch64":
        raise SystemExit(f"FAILED: this Python runs as {machine}, not aarch64")
    return f"{machine}, Python {platform.python_version()}", None


@stage("import mindspore")
def import_mindspore():
    import mindspore

    return f"mindspore {mindspore.__version__}", None


@stage("processor, oneDNN cap and layers read from the architecture")
def check_processor(config):
    from src.cpu import cpu_info
    from src.device import KERNEL_LIBRARY, cap_onednn_isa, kernel_library_status
    from src.model.layers import resolve_conv_impl

    cpu = cpu_info()
    problems = []
    if cpu.x86 or "AVX" in cpu.describe():
        problems.append(f"read as x86: {cpu.describe()}")
    if cap_onednn_isa(config) is not None or "ONEDNN_MAX_CPU_ISA" in os.environ:
        problems.append("an ONEDNN_MAX_CPU_ISA cap was set")
    if kernel_library_status() != "not x86-64":
        problems.append(f"{KERNEL_LIBRARY} counted as usable here")
    if resolve_conv_impl("auto", "CPU") != "mindspore":
        problems.append("conv_impl auto did not take MindSpore's layers")
    if problems:
        raise SystemExit("FAILED: " + "; ".join(problems))
    return cpu.describe(), None


@stage("demo data, python -m src.data.check, MindRecord conversion")
def prepare_data(config, folder):
    from src.data.sources import prepare_split

    python("-m", "src.demo_data", "--out", folder, "--num_train", "4", "--num_val", "2",
           "--seed", "0")
    report = python("-m", "src.data.check", "--data_url", folder)
    prepared = prepare_split(config, "train", os.path.join(folder, "out"), progress=False,
                             log=lambda message: None)
    if not prepared.files or prepared.check["images"] != 4:
        raise SystemExit(f"FAILED: MindRecord conversion: {prepared.check}")
    return (f"{report.strip().splitlines()[0]}; {len(prepared.files)} MindRecord file(s)",
            prepared.files)


@stage("network built with MindSpore's layers; one forward and backward (PyNative)")
def forward_backward(config, files):
    import mindspore as ms
    import numpy as np

    from src.box_coder import BoxCoder
    from src.data.pipeline import batches, create_train_dataset
    from src.loss import SSDWithLossCell
    from src.model.ssd import build_ssd, conv_description

    ms.set_context(mode=ms.PYNATIVE_MODE)
    network = build_ssd(config)
    if network.layers.ours:
        raise SystemExit("FAILED: the network took our x86 kernels")
    data = create_train_dataset(files, BoxCoder.from_config(config), 1, config.img_shape,
                                num_workers=1)
    image, gt_loc, gt_label, num_match, _ = next(batches(data, files, num_epochs=1))
    loss_cell = SSDWithLossCell(network)
    weights = network.trainable_params()
    loss_and_grads = ms.value_and_grad(lambda *batch: loss_cell(*batch)[0], None, weights)
    loss, grads = loss_and_grads(image, gt_loc, gt_label, num_match)
    loss = float(loss.asnumpy())
    norm = float(np.sqrt(sum(float((g.asnumpy() ** 2).sum()) for g in grads)))
    if not np.isfinite(loss) or not np.isfinite(norm) or norm == 0:
        raise SystemExit(f"FAILED: loss {loss}, gradient norm {norm}")
    return (f"convolutions {conv_description(network)}, loss {loss:.3f}, gradient norm "
            f"{norm:.3g}", None)


@stage("export of a batch-1 MINDIR (graph compile)")
def export(config, folder):
    import mindspore as ms

    from src.infer.deploy import export_model

    ms.set_context(mode=ms.GRAPH_MODE)
    path = export_model(config, None, os.path.join(folder, "ssd"), "MINDIR", 1)
    return f"{os.path.basename(path)}, {os.path.getsize(path) / 2 ** 20:.1f} MB", None


FAST_TESTS = ("tests/test_cpu.py", "tests/test_detections.py", "tests/test_launch.py",
              "tests/test_prerequisites.py")


@stage(f"pytest {' '.join(FAST_TESTS)}: x86-only tests skip, saying so, and only they")
def fast_tests():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             *FAST_TESTS], cwd=ROOT, capture_output=True, text=True,
                            timeout=3600)
    lines = result.stdout.strip().splitlines()
    skips = [line for line in lines if line.startswith("SKIPPED")]
    odd = [line for line in skips if "built for x86-64 only" not in line
           and "not an x86-64 processor" not in line]
    if result.returncode != 0 or odd or not skips:
        raise SystemExit(f"FAILED: pytest (exit {result.returncode}); skips not for x86: {odd}"
                         f"\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    return lines[-1], None


@stage("train.py: one graph-mode training step")
def train_step(folder):
    out = python("train.py", "--config", "configs/demo.yaml", "--data_url", folder,
                 "--output_dir", os.path.join(folder, "train"), "--epoch_size", "1",
                 "--batch_size", "4", "--run_platform", "CPU", timeout=4 * 3600)
    return out.strip().splitlines()[-1], None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train_step", action="store_true",
                        help="also one graph-mode training step through train.py (about 20 "
                             "minutes under emulation)")
    args = parser.parse_args()
    from src.config import Config

    check_machine()
    import_mindspore()
    with tempfile.TemporaryDirectory(prefix="ssd-aarch64-") as folder:
        config = Config(coco_root=folder, num_classes=4, run_platform="CPU")
        check_processor(config)
        import mindspore as ms

        ms.set_device("CPU")
        ms.set_seed(1)
        files = prepare_data(config, folder)
        forward_backward(config, files)
        export(config, folder)
        fast_tests()
        if args.train_step:
            train_step(folder)
    print("check-aarch64: every stage passed")


if __name__ == "__main__":
    main()
