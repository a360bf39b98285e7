"""The repository holds sources, not generated files: make clean removes only what git ignores."""
import os
import shlex
import subprocess

from tests.conftest import ROOT


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_make_clean_removes_only_ignored_generated_paths():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    dry = subprocess.run(["make", "--no-print-directory", "-n", "clean"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    words = shlex.split(dry.stdout.replace("\\\n", " "))
    assert words[:2] == ["rm", "-rf"], dry.stdout
    paths = words[2:]
    assert {"outputs", "demo_data", "demo_data-long", "build"} <= set(paths)
    for path in paths:
        assert git("ls-files", "--", path).stdout == "", f"make clean deletes tracked {path}"
        assert git("check-ignore", "-q", "--no-index", path + "/x").returncode == 0, \
            f"{path} is generated but not ignored"


def test_generated_data_and_exports_are_ignored():
    for path in ("demo_data-long/train2017/000000000001.jpg", "ssd.mindir", "ssd.opencv.onnx",
                 "ssd.air", "infer_output/acc.log", "ascend310_infer/out/main"):
        assert git("check-ignore", "-q", "--no-index", path).returncode == 0, path
    assert not [p for p in git("ls-files").stdout.split() if p.startswith("demo_data")]
