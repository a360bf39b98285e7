"""The reference's shell wrappers: argument checks with clear messages, foreground exit status,
started with bash or with sh (the reference's README form; dash on Debian)."""
import os
import platform
import subprocess

import pytest

from tests.conftest import ROOT

SHELLS = pytest.mark.parametrize("shell", ["bash", "sh"])


def bash(*args, env=None, shell="bash"):
    return subprocess.run([shell, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


@SHELLS
def test_train_script_checks_its_arguments(tmp_path, shell):
    def bash(*args):
        return globals()["bash"](*args, shell=shell)

    result = bash("scripts/run_standalone_train.sh", "0", "coco")
    assert result.returncode == 2 and "Usage" in result.stderr
    result = bash("scripts/run_standalone_train.sh", "0", "coco", str(tmp_path / "nope"),
                  str(tmp_path / "mr"), str(tmp_path / "out"))
    assert result.returncode == 2 and "DATASET_PATH" in result.stderr and "nope" in result.stderr
    result = bash("scripts/run_standalone_train.sh", "x", "coco", str(tmp_path), str(tmp_path),
                  str(tmp_path))
    assert result.returncode == 2 and "DEVICE_ID" in result.stderr
    result = bash("scripts/run_standalone_train.sh", "0", "pascal", str(tmp_path), str(tmp_path),
                  str(tmp_path))
    assert result.returncode == 2 and "DATASET" in result.stderr
    result = bash("scripts/run_standalone_train.sh", "0", "coco", str(tmp_path), str(tmp_path),
                  str(tmp_path), str(tmp_path / "missing.ckpt"))
    assert result.returncode == 2 and "PRE_TRAINED_PATH" in result.stderr


def test_train_script_runs_in_the_foreground_and_reports_status(demo_root, tmp_path):
    mindrecord, out = tmp_path / "mr", tmp_path / "out"
    result = bash("scripts/run_standalone_train.sh", "0", "coco", demo_root, str(mindrecord),
                  str(out), "--", "--only_create_dataset",
                  "--run_platform", "CPU")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (mindrecord / "ssd.mindrecord.manifest.json").exists()
    assert "MindRecord set ready" in (out / "train.log").read_text()
    result = bash("scripts/run_standalone_train.sh", "0", "coco", demo_root, str(mindrecord),
                  str(out), "--", "--run_platform", "CPU", "--num_classes", "81")
    assert result.returncode == 1
    assert "FAILED" in result.stderr
    assert "pass --num_classes 4" in (out / "train.log").read_text()


@SHELLS
def test_eval_script_checks_its_arguments(tmp_path, shell):
    def bash(*args):
        return globals()["bash"](*args, shell=shell)

    result = bash("scripts/run_eval.sh", "0", "coco", str(tmp_path), str(tmp_path / "x.ckpt"),
                  str(tmp_path))
    assert result.returncode == 2 and "CHECKPOINT_PATH" in result.stderr
    result = bash("scripts/run_eval.sh", "0")
    assert result.returncode == 2 and "Usage" in result.stderr


@SHELLS
def test_distribute_and_infer_scripts_check_their_arguments(tmp_path, shell):
    result = bash("scripts/run_distribute_train.sh", "--worker_num", "x", "coco", str(tmp_path),
                  str(tmp_path), str(tmp_path), shell=shell)
    assert result.returncode == 2 and "--worker_num must be a number, got 'x'" in result.stderr
    result = bash("scripts/run_distribute_train.sh", "coco", shell=shell)
    assert result.returncode == 2 and "Usage" in result.stderr
    result = bash("scripts/run_infer_cpp.sh", str(tmp_path / "m.onnx"), str(tmp_path), "CPU",
                  str(tmp_path / "a.json"), "CPU", shell=shell)
    assert result.returncode == 2 and "MODEL_PATH" in result.stderr


def test_infer_script_refuses_a_folder_holding_an_earlier_run(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "a.json").write_text("{}")
    out = tmp_path / "infer"
    (out / "result_Files").mkdir(parents=True)
    (out / "result_Files" / "x_0.bin").write_bytes(b"earlier")
    (out / "acc.log").write_text("mAP: 0.5")
    result = bash("scripts/run_infer_cpp.sh", str(tmp_path / "m.onnx"), str(tmp_path), "CPU",
                  str(tmp_path / "a.json"), "CPU", env={"INFER_OUTPUT_PATH": str(out)})
    assert result.returncode == 2
    assert f"{out} holds an earlier run's outputs (result_Files acc.log)" in result.stderr
    assert "INFER_OVERWRITE=1" in result.stderr
    assert sorted(os.listdir(out)) == ["acc.log", "result_Files"]
    assert (out / "result_Files" / "x_0.bin").read_bytes() == b"earlier"


def test_check_aarch64_refuses_a_bad_setting_before_touching_anything(tmp_path):
    """make check-aarch64's script checks its settings (root, an x86-64 host, the train-step
    flag) before installing or building anything (the emulated run itself: docs/platforms.md)."""
    root = tmp_path / "arm64-root"
    result = bash("scripts/check_aarch64.sh",
                  env={"AARCH64_TRAIN_STEP": "yes", "AARCH64_ROOT": str(root)})
    assert result.returncode == 2, result.stdout + result.stderr
    if os.geteuid() != 0:
        expected = "needs root"
    elif platform.machine() != "x86_64":
        expected = "emulates arm64 on an x86-64 host"
    else:
        expected = "AARCH64_TRAIN_STEP must be 0 or 1, got 'yes'"
    assert expected in result.stderr and not root.exists()
