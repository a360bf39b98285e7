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
from tests.test_launch import table_file as rank_table

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
    assert outputs == [".train.lock", "config.yaml", "loss_curve.png", "ssd-1_3.ckpt",
                       "tensorboard", "train_log.jsonl"]   # .train.lock: rank 0 holds the folder
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


# Agreement of the ranks at the start (src.train.agreement), the collective timeout, and the
# rank-table launcher's checks.

def agreeing_values(**changes):
    values = {"steps_per_epoch": 3, "global_step": 0, "resumed": 0, "images": 12,
              "data": 2 ** 64 - 5, "weights": 0x0123456789ABCDEF}
    return {**values, **changes}


def gather_of(*others):
    """A stand-in for the all-gather: this rank's row first, then the other ranks' rows."""
    from src.train.agreement import COMPARED, encode

    def gather(row):
        import numpy as np

        rows = [encode([values[key] for key, _ in COMPARED]) for values in others]
        return np.stack([row, *rows])
    return gather


def test_values_cross_the_collective_exactly_as_float32():
    import numpy as np

    from src.train.agreement import decode, encode

    values = [0, 1, 2 ** 24 + 1, 2 ** 53 + 3, 2 ** 64 - 1]
    assert encode(values).dtype == np.float32
    assert decode(encode(values)) == values
    with pytest.raises(ValueError):
        encode([2 ** 64])


def test_agreeing_ranks_pass_and_different_data_names_the_rank():
    from src.train.agreement import RankDisagreementError, check_ranks_agree

    check_ranks_agree(agreeing_values(), 0, 2, gather_of(agreeing_values()))
    check_ranks_agree(agreeing_values(), 0, 1, gather=None)   # one process: nothing to compare
    other = agreeing_values(steps_per_epoch=2, images=8, data=7)
    with pytest.raises(RankDisagreementError) as caught:
        check_ranks_agree(agreeing_values(), 0, 2, gather_of(other))
    message = str(caught.value)
    assert "rank 1 differs from rank 0: steps per epoch 2 (rank 0: 3), training images 8 " \
           "(rank 0: 12), training data digest 0000000000000007 (rank 0: fffffffffffffffb)." \
           in message
    assert "every machine needs the same images and annotations" in message
    assert "weights" not in message and "resumed" not in message


def test_a_resume_on_rank_zero_only_is_named_with_what_to_do():
    from src.train.agreement import RankDisagreementError, check_ranks_agree

    resumed = agreeing_values(global_step=6, resumed=1, weights=11)
    with pytest.raises(RankDisagreementError) as caught:
        check_ranks_agree(resumed, 0, 2, gather_of(agreeing_values(weights=12)))
    message = str(caught.value)
    assert "rank 1 differs from rank 0: global step to start from 0 (rank 0: 6), resumed " \
           "from a checkpoint no (rank 0: yes), weights digest 000000000000000c (rank 0: " \
           "000000000000000b)" in message
    assert "Rank 0 resumed from a checkpoint that rank 1 did not find" in message
    assert "Copy the checkpoint into TRAIN_OUTPUT_PATH on every machine" in message
    with pytest.raises(RankDisagreementError) as caught:   # only the weights differ
        check_ranks_agree(agreeing_values(), 0, 2, gather_of(agreeing_values(weights=5)))
    assert "the same --pre_trained file" in str(caught.value)


def test_the_odd_rank_out_is_named_even_when_it_is_rank_zero():
    from src.train.agreement import RankDisagreementError, check_ranks_agree

    fresh = agreeing_values()
    with pytest.raises(RankDisagreementError) as caught:
        check_ranks_agree(agreeing_values(global_step=6, resumed=1), 0, 4,
                          gather_of(fresh, fresh, fresh))
    message = str(caught.value)
    assert "rank 0 differs from ranks 1, 2, 3: global step to start from 6 (ranks 1, 2, 3: " \
           "0)" in message


def test_weights_digest_sees_every_bit_of_every_parameter(graph_cpu):
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from src.train.agreement import weights_digest

    ms.set_seed(5)
    first = nn.Dense(4, 3)
    ms.set_seed(5)
    second = nn.Dense(4, 3)
    assert weights_digest(first) == weights_digest(second)   # same seed: the same bits
    bias = second.bias.asnumpy()
    bias[1] = np.nextafter(bias[1], np.float32(1))
    second.bias.set_data(ms.Tensor(bias))
    assert weights_digest(first) != weights_digest(second)


def test_data_digest_sees_the_boxes_not_the_paths():
    from types import SimpleNamespace

    from src.data.records import ImageRecord
    from src.train.agreement import data_digest

    def prepared(root, box_top=1.0):
        records = [ImageRecord(7, f"{root}/a.jpg", 20, 30, [[box_top, 2, 10, 12]], [1]),
                   ImageRecord(9, f"{root}/b.jpg", 20, 30)]
        source = SimpleNamespace(records=records, class_names=("background", "cat"))
        return SimpleNamespace(source=source, files=[f"{root}/mr/ssd.mindrecord"], images=2,
                               check={"images": 2, "boxes": 1})

    assert data_digest(prepared("/node0/data")) == data_digest(prepared("/node1/elsewhere"))
    assert data_digest(prepared("/data")) != data_digest(prepared("/data", box_top=1.5))


def test_collective_timeout_setting():
    from src.train.agreement import (
        COLLECTIVE_TIMEOUT_VARIABLE,
        DEFAULT_COLLECTIVE_TIMEOUT,
        collective_timeout,
        set_collective_timeout,
    )

    environ = {}
    assert collective_timeout(environ) == 30   # MindSpore's own when nothing is set
    assert set_collective_timeout(environ) == DEFAULT_COLLECTIVE_TIMEOUT
    assert environ[COLLECTIVE_TIMEOUT_VARIABLE] == str(DEFAULT_COLLECTIVE_TIMEOUT)
    assert set_collective_timeout({COLLECTIVE_TIMEOUT_VARIABLE: "60"}) == 60
    assert collective_timeout({COLLECTIVE_TIMEOUT_VARIABLE: "-1"}) == -1
    for bad in ("0", "ten", "1.5", ""):
        with pytest.raises(ValueError, match=COLLECTIVE_TIMEOUT_VARIABLE):
            set_collective_timeout({COLLECTIVE_TIMEOUT_VARIABLE: bad})


def test_a_failed_collective_becomes_a_message_naming_rank_and_timeout():
    from src.train.agreement import CollectiveError, collective_failures_named

    kernel_error = RuntimeError("\n- Kernel error:\nLaunch kernel failed: Default/AllReduce-op0")
    with pytest.raises(CollectiveError) as caught:
        with collective_failures_named(1, 2, "CPU", {"MS_CPU_COMM_OP_TIMEOUT": "90"}):
            raise kernel_error
    assert str(caught.value).startswith("rank 1: the collective AllReduce failed: another rank "
                                        "did not take part within MS_CPU_COMM_OP_TIMEOUT=90 s")
    for world, error in ((1, kernel_error), (2, RuntimeError("something else"))):
        with pytest.raises(RuntimeError) as caught:
            with collective_failures_named(0, world, "CPU", {}):
                raise error
        assert caught.value is error


def two_nodes(root, data, port, *extra):
    """Two msrun commands on this machine (node ranks 0 and 1, one process each), each with its
    own data, MindRecord and output folders: two machines with local disks."""
    jobs = []
    for node, folder in enumerate(data):
        command = ["bash", "scripts/run_distribute_train.sh", "--worker_num", "2",
                   "--local_worker_num", "1", "--node_rank", str(node), "--master_addr",
                   "127.0.0.1", "--master_port", str(port), "--timeout", "120", "coco", folder,
                   str(root / f"mindrecord{node}"), str(root / f"node{node}"), "--",
                   "--config", "configs/demo.yaml", "--batch_size", "2", "--run_platform",
                   "CPU", "--progress", "lines", *extra]
        jobs.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))
    return [(job, *job.communicate(timeout=600)) for job in jobs]


def test_ranks_with_different_data_stop_together_naming_the_rank(demo_root, tmp_path):
    from src.demo_data import generate

    fewer = tmp_path / "fewer"
    generate(str(fewer), 8, 4, seed=3)   # rank 1's machine: 8 images, 2 steps per epoch, not 3
    (first, _, stderr), _ = two_nodes(tmp_path, [demo_root, str(fewer)], next(PORTS),
                                      "--epoch_size", "1")
    # The second msrun also exits 1 (it tries to start a scheduler on the taken port): the
    # workers' logs tell what happened.
    assert first.returncode == 1 and "FAILED" in stderr
    for rank in (0, 1):
        log = (tmp_path / f"node{rank}" / "logs" / f"worker_{rank}.log").read_text()
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, log[-3000:]
        assert "rank 1 differs from rank 0: steps per epoch 2 (rank 0: 3), training images 8 " \
               "(rank 0: 12), training data digest" in errors[0]
        assert "weights" not in errors[0]   # fresh weights from the same seed: the same bits
        assert "Traceback" not in log and "epoch 1/1:" not in log
    assert not (tmp_path / "node0" / "train_log.jsonl").exists()


def test_a_rank_that_never_joins_is_bounded_by_the_collective_timeout(tmp_path):
    """init_distributed's default timeout (shortened here to 3 s) bounds a collective that a
    hung rank never joins: the waiting rank stops with a message, msrun stops the other."""
    script = tmp_path / "late.py"
    script.write_text("\n".join([
        "import os, sys, time",
        f"sys.path.insert(0, {ROOT!r})",
        "import src.train.agreement as agreement",
        "from src.device import init_device, init_distributed",
        "agreement.DEFAULT_COLLECTIVE_TIMEOUT = 3",
        "init_device('CPU')",
        "rank, world = init_distributed()",
        "if rank == 1:",
        "    time.sleep(600)",
        "values = dict.fromkeys([key for key, _ in agreement.COMPARED], 1)",
        "try:",
        "    with agreement.collective_failures_named(rank, world, 'CPU', os.environ):",
        "        agreement.check_ranks_agree(values, rank, world)",
        "except agreement.CollectiveError as exc:",
        "    print(f'error: {exc}', file=sys.stderr)",
        "    sys.exit(1)", ""]))
    env = {name: value for name, value in os.environ.items()
           if name != "MS_CPU_COMM_OP_TIMEOUT"}
    env["PATH"] = os.path.join(ROOT, ".venv", "bin") + os.pathsep + env.get("PATH", "")
    start = time.time()
    job = subprocess.run(["msrun", "--worker_num", "2", "--local_worker_num", "2",
                          "--master_port", str(next(PORTS)), "--log_dir", str(tmp_path / "logs"),
                          "--join", "True", "--cluster_time_out", "60", str(script)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert job.returncode != 0
    assert time.time() - start < 150
    log = (tmp_path / "logs" / "worker_0.log").read_text()
    assert "error: rank 0: the collective AllGather failed: another rank did not take part " \
           "within MS_CPU_COMM_OP_TIMEOUT=3 s" in log, log[-3000:]


@pytest.mark.parametrize("case", ["other hosts", "DEVICE_NUM=0", "DEVICE_NUM above", "x"])
def test_rank_table_launcher_refuses_what_would_start_nothing_or_the_wrong_devices(
        demo_root, tmp_path, case):
    import socket

    here = socket.gethostname()
    if case == "other hosts":
        table, device_num = rank_table(tmp_path / "t.json", ("10.255.0.1", 2),
                                       ("10.255.0.2", 2)), None
    else:
        table = rank_table(tmp_path / "t.json", (here, 2), ("10.255.0.2", 2))
        device_num = {"DEVICE_NUM=0": "0", "DEVICE_NUM above": "3", "x": "x"}[case]
    env = dict(os.environ)
    env.pop("DEVICE_NUM", None)
    if device_num is not None:
        env["DEVICE_NUM"] = device_num
    out = tmp_path / "out"
    result = subprocess.run(["bash", "scripts/run_distribute_train.sh", table, "coco", demo_root,
                             str(tmp_path / "mr"), str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "nothing was started" in result.stderr
    if case == "other hosts":
        assert "lists no device of this host: its servers are 10.255.0.1, 10.255.0.2" \
               in result.stderr
    else:
        assert f"DEVICE_NUM={device_num}: this host has 2 device(s)" in result.stderr
    assert not out.exists() and not (tmp_path / "mr").exists()
    assert "processes finished" not in result.stdout


def test_comm_timeout_flag_is_checked_before_anything_starts(demo_root, tmp_path):
    for value, expected in (("0", "--comm_timeout must be above 0 seconds"),
                            ("soon", "--comm_timeout must be a number, got 'soon'")):
        result = subprocess.run(["bash", "scripts/run_distribute_train.sh", "--worker_num", "2",
                                 "--comm_timeout", value, "coco", demo_root,
                                 str(tmp_path / "mr"), str(tmp_path / "out")], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and expected in result.stderr
        assert not (tmp_path / "out").exists()
