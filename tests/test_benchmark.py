"""benchmark.py: every mode runs on the real parts and prints its JSON fields."""
import json
import os

import numpy as np
import pytest

from src.config import Config
from src.cpu import cpu_info
from tests.conftest import X86, run_script

FIELDS = {
    "data": {"data_img_per_s", "data_img_per_s_per_core", "workers", "worker_kind",
             "input_dtype", "data_img_per_s_by_workers"},
    "train": {"train_step_s_median", "train_step_s_min", "train_step_s_max", "train_img_per_s",
              "params"},
    "infer": {"infer_bs1_ms", "infer_bs8_img_per_s"},
    "eval": {"eval_peak_rss_mb", "eval_rss_growth_mb_per_100_images", "images"},
    "eval_stress": {"postprocess_ms_per_image", "json_ms_per_image", "score_ms_per_image",
                    "peak_rss_mb", "detections_per_image", "store_mb"},
    "postprocess": {"postprocess_ms_per_image", "peak_rss_mb"},
    "epochs": {"rss_after_first_epoch_mb", "rss_after_last_epoch_mb", "rss_growth_mb_per_epoch"},
}


def test_all_modes_print_their_fields():
    result = run_script(["benchmark.py", "--mode", "all", "--batch_size", "2", "--steps", "1",
                         "--warmup", "0", "--device_target", "CPU", "--eval_images", "12",
                         "--eval_batch_size", "2", "--stress_images", "4,12",
                         "--peers", "onnxruntime,openvino", "--int8", "true",
                         "--calibration_images", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["mode"] for line in lines] == [
        "data", "train", "infer", "eval", "eval_stress", "eval_stress", "postprocess"]
    for line in lines:
        assert FIELDS[line["mode"]] <= set(line), line
        assert line["mindspore"] == "2.10.0" and line["device"] == "CPU"
        # make builds our kernels on x86-64; uncapped oneDNN then
        assert line["conv_impl"] == ("onednn" if X86 else "mindspore")
        assert line["ONEDNN_MAX_CPU_ISA"] == os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
        cpu = cpu_info()
        assert (line["cpu_model"], line["onednn_isa"], line["layout_block"]) == (
            cpu.model_name, cpu.effective_isa, cpu.block)
    infer = lines[2]
    for peer in ("onnxruntime", "openvino"):
        assert infer[f"peer_{peer}_bs1_ms"] > 0 and infer[f"peer_{peer}_bs8_img_per_s"] > 0
        # the precision ours runs (OpenVINO picks bfloat16 itself where the CPU has it)
        assert infer[f"peer_{peer}_precision"] == infer["conv_dtype"] == "float32"
        assert infer[f"bs1_speedup_vs_{peer}"] == pytest.approx(
            infer[f"peer_{peer}_bs1_ms"] / infer["infer_bs1_ms"], rel=0.01)
    assert infer["threads"] == (len(os.sched_getaffinity(0)))
    # the int8 model of the same weights, calibrated on generated images
    assert infer["int8_bs1_ms"] > 0 and infer["int8_bs8_img_per_s"] > 0
    assert infer["int8_speedup_bs8"] == pytest.approx(
        infer["int8_bs8_img_per_s"] / infer["infer_bs8_img_per_s"], rel=0.01)
    assert infer["int8_backend"].startswith("openvino ") and "NNCF" in infer["int8_backend"]
    assert infer["int8_calibration_images"] == 4
    train = lines[1]
    assert train["params"] == 12_703_542 and train["train_img_per_s"] > 0
    assert lines[0]["data_img_per_s"] > 0 and lines[6]["postprocess_ms_per_image"] > 0
    data = lines[0]
    assert (data["worker_kind"], data["input_dtype"]) == ("threads", "float32")
    counts = sorted({"1", "2", str(data["cores"])}, key=int)
    assert sorted(data["data_img_per_s_by_workers"]) == [
        "processes_float32", "processes_uint8", "threads_float32", "threads_uint8"]
    for rates in data["data_img_per_s_by_workers"].values():
        assert sorted(rates, key=int) == counts and min(rates.values()) > 0
    # The worst case: an untrained 81-class model keeps 100 boxes per class, all scored.
    small, large = lines[4], lines[5]
    assert (small["images"], large["images"]) == (4, 12)
    assert small["detections_per_image"] == large["detections_per_image"] == 8000
    assert small["nms"] == ("kernel" if X86 else "numpy") and small["coco_evaluator"] == "ultrafast"
    assert large["store_mb"] == pytest.approx(12 * 8000 * 22 / 2 ** 20, abs=0.1)
    assert 0 < large["score_ms_per_image"] and "peak_rss_growth_mb_per_1000_images" in large
    assert 50 < small["peak_rss_mb"] < 1000        # its own process: no MindSpore, no model
    evaluation = lines[3]
    assert evaluation["images"] == 12
    # Eval streams its batches: resident memory after the last of six batches stays within
    # allocator noise of the first (a retained graph, iterator or batch per step would not).
    growth = (evaluation["eval_rss_after_last_batch_mb"]
              - evaluation["eval_rss_after_first_batch_mb"])
    assert growth < 50, evaluation


def test_twin_comparison_ratios():
    from src.measure import compare_with_twin

    ratios = compare_with_twin({"train_img_per_s": 3.0, "infer_bs1_ms": 50.0},
                               {"train_img_per_s": 2.0, "infer_bs1_ms": 100.0,
                                "infer_bs8_img_per_s": 10.0, "torch_version": "2.13.0"})
    assert ratios["train_img_per_s_ratio"] == 1.5 and ratios["infer_bs1_ms_ratio"] == 0.5
    assert "infer_bs8_img_per_s_ratio" not in ratios and ratios["twin_torch"] == "2.13.0"


def test_missing_twin_script_is_refused():
    result = run_script(["benchmark.py", "--twin", "/nonexistent/torch_twin.py"], timeout=120)
    assert result.returncode == 2 and "/nonexistent/torch_twin.py" in result.stderr


def test_bad_mode_is_refused():
    result = run_script(["benchmark.py", "--mode", "fast"], timeout=120)
    assert result.returncode == 2 and "--mode" in result.stderr


def test_epochs_mode_reports_memory_across_epochs_of_the_training_loop():
    result = run_script(["benchmark.py", "--mode", "epochs", "--epochs", "4", "--batch_size", "2",
                         "--device_target", "CPU"])
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("{")))
    assert line["mode"] == "epochs" and line["epochs"] == 4 and FIELDS["epochs"] <= set(line)
    assert 200 < line["rss_after_first_epoch_mb"] <= line["rss_after_last_epoch_mb"] + 100
    assert line["growth_from_epoch"] == 2


def test_bad_stress_sizes_are_refused():
    result = run_script(["benchmark.py", "--mode", "eval", "--stress_images", "10,x"],
                        timeout=120)
    assert result.returncode == 2 and "--stress_images '10,x'" in result.stderr


def test_overfit_mode_trains_and_scores_the_same_images():
    """Two steps only (the measured run is in docs/demo.md): the real batch, train step and
    evaluation run, and the fields are there; the loss of a trained step is finite."""
    result = run_script(["benchmark.py", "--mode", "overfit", "--overfit_steps", "2",
                         "--device_target", "CPU"])
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("{")))
    assert line["mode"] == "overfit" and line["images"] == 8 and line["overfit_steps"] == 2
    assert {"overfit_ap50", "overfit_ap", "overfit_seconds", "reached"} <= set(line)
    assert line["history"][-1]["step"] == 2 and 0 < line["final_loss"] < 1000
    assert 0 <= line["overfit_ap"] <= line["overfit_ap50"] <= 1 and line["reached"] is False


def test_cap_per_class_keeps_the_first_of_each_class_in_order():
    from src.detections import batched_nms
    from src.measure import cap_per_class

    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 300, (400, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1) + 5], axis=1)
    scores = rng.uniform(0, 1, 400)
    classes = rng.integers(1, 4, 400)
    uncapped = batched_nms(boxes, scores, classes, 0.6, 10 ** 6)
    capped = cap_per_class(uncapped, classes, 7)
    np.testing.assert_array_equal(capped, batched_nms(boxes, scores, classes, 0.6, 7))
    assert np.bincount(classes[capped]).max() == 7 < np.bincount(classes[uncapped]).max()


def test_torchvision_peer_gives_our_detections_with_its_nms_signature():
    """The peer's glue (threshold, pixel scale, per-class and per-image caps), run with an NMS of
    torchvision's signature (numpy here: torchvision's PyPI wheels need CUDA's torch)."""
    from src.detections import PostProcessor, batched_nms
    from src.measure import differing_detections, synthetic_outputs, torchvision_detect

    config = Config(num_classes=5)
    boxes, scores = synthetic_outputs(config, np.random.default_rng(0))
    calls = []

    def nms(candidates, candidate_scores, classes, threshold):
        calls.append(len(candidates))
        return batched_nms(candidates, candidate_scores, classes, threshold, 10 ** 6)

    for max_per_image in (0, 30):
        post = PostProcessor(range(5), 0.05, 0.5, 4, max_per_image, plus_one=False)
        ours = post.detect(boxes, scores, (480.0, 640.0))
        theirs = torchvision_detect(post, nms)(boxes, scores, (480.0, 640.0))
        assert differing_detections(ours, theirs) == 0 and len(ours[1]) == len(theirs[1])
        assert len(ours[1]) == (4 * 4 if max_per_image == 0 else 16)
    assert calls[0] == (scores[:, 1:] > 0.05).sum() > 100
    moved = (theirs[0] + [[0, 0, 0, 1]], *theirs[1:])
    assert differing_detections(ours, moved) == 2 * len(ours[1])
    with pytest.raises(ValueError, match="'\\+1'"):
        torchvision_detect(PostProcessor(range(5), plus_one=True), nms)


def test_peers_are_refused_outside_their_mode_or_when_not_installed(monkeypatch, capsys):
    import importlib.util

    import benchmark

    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--mode", "infer", "--peers", "torchvision"])
    assert exit_info.value.code == 2 and "--mode postprocess" in capsys.readouterr().err
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchvision" else real_find_spec(name))
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--mode", "postprocess", "--peers", "torchvision"])
    assert exit_info.value.code == 2 and "pip install torch torchvision" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main(["--mode", "infer", "--peers", "tensorrt"])
    assert "tensorrt unknown" in capsys.readouterr().err
