"""Data-parallel training with msrun on 2 CPU processes: same answer as one process with twice
the batch, only rank 0 writes, resume works, a dead rank fails the whole job quickly."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_script

PORTS = iter(range(8151, 8199))


def distributed(demo_root, root, *extra, name="two", background=False):
    command = ["bash", "scripts/run_distribute_train.sh", "--worker_num", "2", "--master_port",
               str(next(PORTS)), "--timeout", "120", "coco", demo_root,
               str(root / "mindrecord"), str(root / name), str(root / "init.ckpt"), "--",
               "--config", "configs/demo.yaml", "--batch_size", "2", "--run_platform", "CPU",
               "--progress", "lines", *extra]
    if background:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(demo_root, tmp_path_factory):
    """One initial checkpoint; 2 processes x batch 2 and 1 process x batch 4 from it, with
    BatchNorm on running statistics and the loss normalised over all devices."""
    root = tmp_path_factory.mktemp("dist")
    script = ("import sys; sys.path.insert(0, {root!r}); import mindspore as ms;"
              "from src.device import init_device; init_device('CPU');"
              "from src.config import Config; from src.model import build_ssd;"
              "ms.save_checkpoint(build_ssd(Config(num_classes=4)), {path!r})").format(
        root=ROOT, path=str(root / "init.ckpt"))
    assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == 0
    same = ["--epoch_size", "1", "--loss_norm", "global", "--freeze_bn", "true"]
    two = distributed(demo_root, root, *same)
    one = run_script(["train.py", "--config", "configs/demo.yaml", "--data_url", demo_root,
                      "--mindrecord_url", str(root / "mindrecord"), "--train_url",
                      str(root / "one"), "--batch_size", "4", "--run_platform", "CPU",
                      "--pre_trained", str(root / "init.ckpt"), "--progress", "off", *same])
    return root, two, one


def test_two_processes_match_one_with_twice_the_batch(runs):
    import mindspore as ms

    root, two, one = runs
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    init = ms.load_checkpoint(str(root / "init.ckpt"))
    a = ms.load_checkpoint(str(root / "two" / "ssd-1_3.ckpt"))
    b = ms.load_checkpoint(str(root / "one" / "ssd-1_3.ckpt"))
    difference = update = 0.0
    for name, start in init.items():
        if "moving" in name:
            continue
        moved_a = a[f"network.{name}"].asnumpy() - start.asnumpy()
        moved_b = b[f"network.{name}"].asnumpy() - start.asnumpy()
        difference += float(((moved_a - moved_b) ** 2).sum())
        update += float((moved_b ** 2).sum())
    assert update > 0
    assert (difference / update) ** 0.5 < 1e-4


def test_only_rank_zero_writes_and_logs(runs):
    root, two, _ = runs
    logs = root / "two" / "logs"
    rank0, rank1 = (open(logs / f"worker_{r}.log").read() for r in (0, 1))
    assert "batch 2 per device x 2 devices = global batch 4" in rank0
    assert "epoch 1/1: mean loss" in rank0 and "epoch 1/1" not in rank1
    assert "Saved checkpoint" not in rank1
    outputs = sorted(n for n in os.listdir(root / "two") if n != "logs")
    assert outputs == ["config.yaml", "loss_curve.png", "ssd-1_3.ckpt", "train_log.jsonl"]
    steps = [json.loads(line) for line in open(root / "two" / "train_log.jsonl")]
    assert [r["global_step"] for r in steps if r["kind"] == "step"] == [1, 2, 3]
    assert len(os.listdir(root / "mindrecord")) > 0


def test_distributed_run_resumes(runs, demo_root):
    root, two, _ = runs
    assert two.returncode == 0
    again = distributed(demo_root, root, "--epoch_size", "2", "--loss_norm", "global",
                        "--freeze_bn", "true", "--resume", "auto")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    log = open(root / "two" / "logs" / "worker_0.log").read()
    assert "Resuming from" in log and (root / "two" / "ssd-2_3.ckpt").exists()


def worker_pid(output_dir, rank):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            environ = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if "train.py" in command and str(output_dir) in command and \
                f"\0RANK_ID={rank}\0" in f"\0{environ}":
            return int(pid)
    return None


def test_a_dead_rank_fails_the_job_quickly(runs, demo_root):
    root, _, _ = runs
    job = distributed(demo_root, root, "--epoch_size", "50", name="doomed", background=True)
    log = root / "doomed" / "train_log.jsonl"
    deadline = time.time() + 600
    while (not log.exists() or log.stat().st_size == 0) and time.time() < deadline \
            and job.poll() is None:
        time.sleep(0.5)
    victim = worker_pid(root / "doomed", 1)
    assert victim, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    killed = time.time()
    _, stderr = job.communicate(timeout=120)
    assert time.time() - killed < 60
    assert job.returncode != 0
    assert "FAILED" in stderr
    assert f"first failing rank: 1, log {root / 'doomed' / 'logs' / 'worker_1.log'}" in stderr
