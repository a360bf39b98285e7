"""benchmark.py: every mode runs on the real parts and prints its JSON fields."""
import json

from tests.conftest import run_script

FIELDS = {
    "data": {"data_img_per_s", "data_img_per_s_per_core", "workers"},
    "train": {"train_step_s_median", "train_step_s_min", "train_step_s_max", "train_img_per_s",
              "params"},
    "infer": {"infer_bs1_ms", "infer_bs8_img_per_s"},
    "postprocess": {"postprocess_ms_per_image", "peak_rss_mb"},
}


def test_all_modes_print_their_fields():
    result = run_script(["benchmark.py", "--mode", "all", "--batch_size", "2", "--steps", "1",
                         "--warmup", "0", "--device_target", "CPU"])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["mode"] for line in lines] == ["data", "train", "infer", "postprocess"]
    for line in lines:
        assert FIELDS[line["mode"]] <= set(line), line
        assert line["mindspore"] == "2.10.0" and line["device"] == "CPU"
        assert line["conv_impl"] == "onednn"  # make builds our kernels; uncapped oneDNN then
        assert line["ONEDNN_MAX_CPU_ISA"] == ""
    train = lines[1]
    assert train["params"] == 12_703_542 and train["train_img_per_s"] > 0
    assert lines[0]["data_img_per_s"] > 0 and lines[3]["postprocess_ms_per_image"] > 0


def test_bad_mode_is_refused():
    result = run_script(["benchmark.py", "--mode", "fast"], timeout=120)
    assert result.returncode == 2 and "--mode" in result.stderr
