"""A run you can trust: resume equals an uninterrupted run, SIGTERM leaves a resumable
checkpoint, non-finite steps are skipped and stop the run, backbone checkpoints really load,
evaluation during training keeps best.ckpt."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from src.config import Config
from src.train.checkpoint import CheckpointError, list_checkpoints, save_checkpoint
from src.train.pretrained import backbone_name, load_backbone
from tests.conftest import ROOT, run_script


def train_args(demo_root, output_dir, *extra):
    return ["train.py", "--config", "configs/demo.yaml", "--data_url", demo_root,
            "--output_dir", str(output_dir), "--run_platform", "CPU", "--batch_size", "4",
            "--epoch_size", "2", "--save_checkpoint_epochs", "1", "--progress", "lines",
            "--mindrecord_dir", str(output_dir.parent / "mindrecord"), *extra]


def weights(path):
    import mindspore as ms

    return {name: p.asnumpy() if hasattr(p, "asnumpy") else p
            for name, p in ms.load_checkpoint(str(path)).items()}


def steps_logged(output_dir):
    path = output_dir / "train_log.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in open(path) if '"kind": "step"' in line)


@pytest.fixture(scope="module")
def uninterrupted(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    result = run_script(train_args(demo_root, out, "--eval_interval", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_eval_during_training_keeps_best_checkpoint(uninterrupted):
    out, result = uninterrupted
    rows = [json.loads(line) for line in open(out / "train_log.jsonl")]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    assert (out / "best.ckpt").exists()
    best = max(evals, key=lambda r: r["mAP"])
    assert f"eval epoch {best['epoch']}: mAP" in result.stdout
    state = weights(out / "best.ckpt")
    assert int(state["train_state.epoch"]) == best["epoch"]
    # eval.py's scoring and files: the report printed, the last evaluation's results written
    results = json.load(open(out / "eval" / "eval_results.json"))
    assert results["epoch"] == 2 and results["mAP"] == evals[-1]["mAP"]
    assert (out / "eval" / "detections.json").exists() and result.stdout.count("mAP: ") == 2
    # each evaluation says first how many images it scores (all of them are)
    for epoch in (1, 2):
        assert f"eval epoch {epoch}: scoring {results['images']} images of COCO" in result.stdout


def test_tensorboard_reads_the_runs_steps_evaluations_and_pictures(uninterrupted):
    """TensorBoard's own reader finds every step's losses, learning rate, speed and loss scale
    (at the logged values), each evaluation's mAP and AP50, and validation pictures."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = uninterrupted
    rows = [json.loads(line) for line in open(out / "train_log.jsonl")]
    steps = [r for r in rows if r["kind"] == "step"]
    evals = [r for r in rows if r["kind"] == "eval"]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("loss/total", "loss/class", "loss/box", "train/lr", "train/img_per_s",
                "train/loss_scale"):
        assert tag in tags["scalars"], tag
    loss = events.Scalars("loss/total")
    assert [e.step for e in loss] == [r["global_step"] for r in steps]
    np.testing.assert_allclose([e.value for e in loss], [r["loss"] for r in steps], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in events.Scalars("train/lr")],
                               [r["lr"] for r in steps], rtol=1e-6)
    for key in ("mAP", "AP50"):
        np.testing.assert_allclose([e.value for e in events.Scalars(f"eval/{key}")],
                                   [r[key] for r in evals], rtol=1e-6, atol=1e-7)
    pictures = [tag for tag in tags["images"] if tag.startswith("eval/image_")]
    assert len(pictures) == 4
    first = events.Images(pictures[0])
    assert len(first) == 2 and first[0].width > 0 and first[0].height > 0


def test_sigterm_then_resume_gives_the_same_weights(uninterrupted, demo_root, tmp_path):
    straight, _ = uninterrupted
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, *train_args(demo_root, out)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while steps_logged(out) < 4 and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert "Stopped by SIGTERM" in output and "--resume auto" in output
    interrupted = list_checkpoints(out)[-1]
    assert os.path.basename(interrupted) in ("ssd-2_1.ckpt", "ssd-2_2.ckpt")
    # resumed reading the steps back two at a time: the same rows and weights
    result = run_script(train_args(demo_root, out, "--resume", "auto", "--log_interval", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout
    rows = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert [r["global_step"] for r in rows if r["kind"] == "step"] == list(range(1, 7))
    straight_rows = [json.loads(line) for line in open(straight / "train_log.jsonl")]
    assert [(r["loss"], r["finite"]) for r in rows if r["kind"] == "step"] == [
        (r["loss"], r["finite"]) for r in straight_rows if r["kind"] == "step"]
    resumed, reference = weights(out / "ssd-2_3.ckpt"), weights(straight / "ssd-2_3.ckpt")
    assert set(resumed) == set(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_non_finite_steps_are_skipped_then_stop_the_run(demo_root, tmp_path):
    out = tmp_path / "run"
    result = run_script(train_args(demo_root, out, "--lr", "1e12", "--warmup_epochs", "0",
                                   "--max_nonfinite_steps", "2", "--log_interval", "4"))
    assert result.returncode == 1
    assert "update skipped; images [" in result.stdout
    assert "2 non-finite steps in a row" in result.stderr and "on images [" in result.stderr
    rows = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert [r["finite"] for r in rows if r["kind"] == "step"][-2:] == [False, False]
    # read at the epoch's end (3 steps, --log_interval 4): every step that ran is logged
    assert [r["global_step"] for r in rows if r["kind"] == "step"] == [1, 2, 3]
    assert list_checkpoints(out) == []


def test_resume_auto_ignores_unfinished_writes(tmp_path):
    (tmp_path / ".tmp-123-ssd-5_3.ckpt").write_bytes(b"half a checkpoint")
    (tmp_path / "ssd-2_3.ckpt").write_bytes(b"x")
    (tmp_path / "ssd-10_3.ckpt").write_bytes(b"x")
    (tmp_path / "ssd-10_1.ckpt").write_bytes(b"x")
    assert [os.path.basename(p) for p in list_checkpoints(tmp_path)] == [
        "ssd-2_3.ckpt", "ssd-10_1.ckpt", "ssd-10_3.ckpt"]


def test_checkpoint_write_is_atomic(tmp_path, graph_cpu, monkeypatch):
    """A write that fails (a full disk) leaves no file under a checkpoint's name, no temporary
    file, the earlier checkpoints as they were, and an error naming the file."""
    import errno

    import mindspore as ms
    from mindspore import nn

    cell = nn.Dense(2, 2)
    earlier = tmp_path / "ssd-1_1.ckpt"
    save_checkpoint(cell, str(earlier))
    before = earlier.read_bytes()
    target = tmp_path / "ssd-2_1.ckpt"

    def crash(*args, **kwargs):
        open(args[1], "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", crash)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*ssd-2_1\.ckpt .*No "
                                              r"space left.*already written are kept"):
        save_checkpoint(cell, str(target))
    assert not target.exists() and list_checkpoints(tmp_path) == [str(earlier)]
    assert os.listdir(tmp_path) == ["ssd-1_1.ckpt"] and earlier.read_bytes() == before


TORCH_BACKBONE = (
    [("conv1.weight", (64, 3, 7, 7))]
    + [(f"bn1.{n}", (64,)) for n in ("weight", "bias", "running_mean", "running_var")]
    + [(f"layer{layer}.{block}.{kind}", shape)
       for layer, blocks, channels, in_channels in ((1, 3, 64, 64), (2, 4, 128, 64),
                                                     (3, 6, 256, 128))
       for block in range(blocks)
       for kind, shape in (
           [("conv1.weight", (channels, in_channels if block == 0 else channels, 3, 3)),
            ("conv2.weight", (channels, channels, 3, 3))]
           + [(f"bn{i}.{n}", (channels,)) for i in (1, 2)
              for n in ("weight", "bias", "running_mean", "running_var")]
           + ([("downsample.0.weight", (channels, in_channels, 1, 1))]
              + [(f"downsample.1.{n}", (channels,))
                 for n in ("weight", "bias", "running_mean", "running_var")]
              if block == 0 and layer > 1 else []))]
    + [("layer4.0.conv1.weight", (512, 256, 3, 3)), ("fc.weight", (1000, 512)),
       ("fc.bias", (1000,))])


def test_checkpoints_store_their_default_boxes_and_refuse_others(tmp_path, graph_cpu):
    """A training checkpoint stores its default-box keys. Inference's and resume's checks
    refuse a config with other boxes, naming each key with both values and giving the flags
    that set the checkpoint's (they parse back to its boxes); checkpoints that store no boxes
    (the reference's) pass, damaged box settings are refused."""
    import shlex

    import mindspore as ms
    from mindspore import nn

    from src.anchors import box_flags, box_settings
    from src.config_loader import load_config, parse_config
    from src.model.metadata import INFERENCE_ADVICE, metadata_entries
    from src.model.weights import DEFAULT_BOXES, check_default_boxes, read_checkpoint
    from src.train.checkpoint import restore

    demo = load_config(os.path.join(ROOT, "configs", "demo.yaml"))
    cell = nn.Dense(2, 2)
    path = str(tmp_path / "ssd-1_3.ckpt")
    save_checkpoint(cell, path, metadata_entries(demo, epoch=1, step_in_epoch=3, global_step=3,
                                              seed=1, steps_per_epoch=3,
                                              class_names=demo.classes))
    params = read_checkpoint(path)
    assert json.loads(params[DEFAULT_BOXES]) == box_settings(demo)
    check_default_boxes(params, demo, path, INFERENCE_ADVICE)
    with pytest.raises(CheckpointError) as refused:
        check_default_boxes(params, Config(), path, INFERENCE_ADVICE)
    message = str(refused.value)
    assert f"{path} was trained with other default boxes than this run's" in message
    assert "steps [8, 16, 32, 64, 100, 300] (this run: [7, 15, 30, 60, 100, 300])" in message
    assert "min_scale 0.1 (this run: 0.2)" in message and "max_scale" not in message
    flags = "--steps 8,16,32,64,100,300 --min_scale 0.1"
    assert "decoded against boxes it did not learn" in message and flags in message
    assert box_settings(parse_config(shlex.split(flags))) == box_settings(demo)
    ratios = [[3], [2], [2, 3], [2], [3], [2]]
    assert parse_config(shlex.split(box_flags({"aspect_ratios": ratios}))).aspect_ratios == \
        tuple(tuple(r) for r in ratios)
    with pytest.raises(CheckpointError, match=r"Resume with the settings it was trained with "
                                              r"\(--steps 8,16,32,64,100,300 --min_scale 0\.1\)"):
        restore(cell, path, 3, Config())
    plain = str(tmp_path / "reference.ckpt")
    ms.save_checkpoint(cell, plain)
    check_default_boxes(read_checkpoint(plain), Config(), plain, INFERENCE_ADVICE)
    damaged = str(tmp_path / "damaged.ckpt")
    ms.save_checkpoint(cell, damaged, append_dict={DEFAULT_BOXES: "[1, 2]"})
    with pytest.raises(CheckpointError, match=r"damaged\.ckpt: train_state\.default_boxes is "
                                              r"not a JSON mapping"):
        check_default_boxes(read_checkpoint(damaged), Config(), damaged, INFERENCE_ADVICE)


def test_backbone_checkpoint_in_classification_naming_loads_every_tensor(tmp_path, graph_cpu):
    import mindspore as ms

    from src.model import build_ssd

    rng = np.random.default_rng(0)
    values = {f"backbone.{name}": rng.normal(size=shape).astype(np.float32)
              for name, shape in TORCH_BACKBONE}
    path = str(tmp_path / "resnet34.ckpt")
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in values.items()], path)
    network = build_ssd(Config())
    loaded, skipped = load_backbone(network, path)
    backbone = [p for p in network.get_parameters() if ".module." in p.name]
    assert len(loaded) == len(backbone) == len(TORCH_BACKBONE) - 3
    assert set(skipped) == {"backbone.layer4.0.conv1.weight", "backbone.fc.weight",
                            "backbone.fc.bias"}
    own = {p.name: p.asnumpy() for p in network.get_parameters()}
    for name, value in values.items():
        target = backbone_name(name)
        if target in own:
            np.testing.assert_array_equal(own[target], value)
    assert own["feature_extractor.module.layer2.0.down_sample_layer.1.moving_variance"] is not None
    empty = str(tmp_path / "other.ckpt")
    ms.save_checkpoint([{"name": "head.weight", "data": ms.Tensor(np.zeros(3, np.float32))}],
                       empty)
    with pytest.raises(CheckpointError, match="none of its 1 tensors"):
        load_backbone(network, empty)


HEADS = ("multi_loc_layers", "multi_cls_layers")


def bare(name):
    while name.startswith("network."):
        name = name[len("network."):]
    return name


@pytest.fixture(scope="module")
def coco_detector_checkpoint(graph_cpu, tmp_path_factory):
    """An 81-class (COCO) detector checkpoint whose every tensor differs from any
    initialisation: conv weights negated, biases, beta and moving means 0.1 higher, gamma
    halved, moving variances doubled. Returns (path, {name: value})."""
    import mindspore as ms

    from src.config_loader import load_config
    from src.model import build_ssd

    network = build_ssd(load_config(num_classes=81))
    values = {}
    for p in network.get_parameters():
        value, name = p.asnumpy(), p.name
        if name.endswith(".weight"):
            value = -value
        elif name.endswith((".bias", ".beta", ".moving_mean")):
            value = value + np.float32(0.1)
        elif name.endswith(".gamma"):
            value = value * np.float32(0.5)
        elif name.endswith(".moving_variance"):
            value = value * np.float32(2)
        values[name] = value.astype(np.float32)
    path = str(tmp_path_factory.mktemp("coco_detector") / "ssd_coco.ckpt")
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in values.items()], path)
    return path, values


def test_pre_trained_detector_of_another_class_count_without_filter_weight_is_refused(
        coco_detector_checkpoint, demo_root, tmp_path):
    path, _ = coco_detector_checkpoint
    out = tmp_path / "run"
    result = run_script(train_args(demo_root, out, "--pre_trained", path, "--epoch_size", "1"))
    assert result.returncode == 1, result.stdout[-3000:]
    assert path in result.stderr and "multi_box.multi_" in result.stderr, result.stderr[-3000:]
    assert "has shape" in result.stderr and "--filter_weight" in result.stderr
    assert "Traceback" not in result.stderr
    assert list_checkpoints(out) == [] and steps_logged(out) == 0


def test_filter_weight_loads_all_but_the_heads_which_keep_their_initial_values(
        coco_detector_checkpoint, demo_root, tmp_path):
    """The 81-class checkpoint into the 4-class demo model with --filter_weight true. A learning
    rate of 1e-30 (below float32 resolution of every loaded value) and --freeze_bn (running
    statistics stay) make the epoch-1 checkpoint show what was loaded."""
    path, coco = coco_detector_checkpoint
    out = tmp_path / "run"
    result = run_script(train_args(demo_root, out, "--pre_trained", path, "--filter_weight",
                                   "true", "--epoch_size", "1", "--lr", "1e-30", "--lr_init", "0",
                                   "--warmup_epochs", "0", "--freeze_bn", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert path in result.stdout and "--filter_weight" in result.stdout
    state = {bare(n): v for n, v in weights(out / "ssd-1_3.ckpt").items()
             if not n.startswith(("moments.", "train_state."))}
    body = [n for n in coco if not any(h in n for h in HEADS)]
    heads = [n for n in coco if any(h in n for h in HEADS)]
    assert len(body) > 150 and len(heads) == 6 * 2 * 7          # 6 maps x 2 heads x 7 tensors
    assert set(coco) <= set(state)
    for name in body:                                           # backbone and extra blocks
        np.testing.assert_allclose(state[name], coco[name], rtol=1e-6, atol=1e-12, err_msg=name)
    assert state["multi_box.multi_cls_layers.0.3.weight"].shape == (4 * 4, 256, 1, 1)
    assert coco["multi_box.multi_cls_layers.0.3.weight"].shape == (4 * 81, 256, 1, 1)
    prior = yaml.safe_load(open(os.path.join(ROOT, "configs", "demo.yaml")))["cls_bias_prior"]
    object_logit = np.log(prior / (1 - prior))
    for name in heads:                                          # the demo model's own init
        value = state[name]
        if name.endswith(".bias") and "multi_cls_layers" in name:  # the class prior, 4 classes
            expected = np.tile(np.float32([-object_logit] + [object_logit] * 3), len(value) // 4)
            np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=name)
        elif name.endswith((".bias", ".beta", ".moving_mean")):
            assert np.abs(value).max() < 1e-20, name
        elif name.endswith((".gamma", ".moving_variance")):
            assert np.all(value == 1), name
        else:
            assert 0 < np.abs(value).max() <= 0.04 + 1e-7, name
            if value.shape == coco[name].shape:
                assert not np.allclose(value, coco[name]), name


def test_pre_trained_epoch_size_continues_the_schedule_at_that_epoch(uninterrupted, demo_root,
                                                                      tmp_path):
    """--pre_trained_epoch_size 1 with a 2-epoch schedule of 3 steps per epoch: only epoch 2 runs,
    its first step at global step 4 with lr[3] of the table (the end of the 1-epoch warm-up:
    the peak 0.02 of configs/demo.yaml), as in the uninterrupted run."""
    straight, _ = uninterrupted
    out = tmp_path / "run"
    result = run_script(train_args(demo_root, out, "--pre_trained", str(straight / "ssd-1_3.ckpt"),
                                   "--pre_trained_epoch_size", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "train_log.jsonl")]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [(r["epoch"], r["global_step"]) for r in steps] == [(2, 4), (2, 5), (2, 6)]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [2]
    # lr_i = lr_end + (lr_max - lr_end)(1 + cos(pi (i - W) / (T - W))) / 2 for i >= W = 3, T = 6
    lr_max, lr_end = 0.02, 0.02 * 0.001
    table = [lr_end + (lr_max - lr_end) * (1 + np.cos(np.pi * (i - 3) / 3)) / 2 for i in (3, 4, 5)]
    assert [r["lr"] for r in steps] == pytest.approx(table, rel=1e-6)
    assert steps[0]["lr"] == pytest.approx(0.02, rel=1e-6)
    reference = {r["global_step"]: r["lr"] for r in map(json.loads, open(
        straight / "train_log.jsonl")) if r["kind"] == "step"}
    assert [r["lr"] for r in steps] == [reference[4], reference[5], reference[6]]
    assert reference[1] == pytest.approx(0.001)                  # what a fresh run starts at
    assert [os.path.basename(p) for p in list_checkpoints(out)] == ["ssd-2_3.ckpt"]
    state = weights(out / "ssd-2_3.ckpt")
    assert int(state["train_state.epoch"]) == 2 and int(state["train_state.global_step"]) == 6
