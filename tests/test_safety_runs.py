"""Nothing lost, nothing silently wrong, for runs and checkpoints: an earlier run's folder is
never overwritten (a failed checkpoint write: tests/test_training.py), a torn log line does not
stop a resume, and a checkpoint that only partly fits is refused where a partial
network would give wrong answers."""
import json
import os

import pytest

from tests.conftest import run_script
from tests.test_training import train_args


def folder_state(folder):
    """{relative path: bytes} of every file under ``folder``."""
    state = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, folder)] = f.read()
    return state


@pytest.fixture(scope="module")
def one_run(demo_root, tmp_path_factory):
    """A finished one-epoch run in <tmp>/run."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = run_script(train_args(demo_root, out, "--epoch_size", "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_a_new_run_into_an_earlier_runs_folder_is_refused_and_touches_nothing(one_run,
                                                                               demo_root):
    before = folder_state(one_run)
    result = run_script(train_args(demo_root, one_run, "--epoch_size", "1"), timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "holds an earlier training run" in result.stderr
    for choice in ("--resume auto", "--output_dir", "--overwrite true"):
        assert choice in result.stderr, result.stderr
    assert folder_state(one_run) == before


def test_overwrite_moves_the_earlier_run_aside_and_trains_afresh(one_run, demo_root, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_run, out)
    before = {name: data for name, data in folder_state(out).items()
              if not name.startswith("mindrecord") and name != ".train.lock"}  # data; the hold
    result = run_script(train_args(demo_root, out, "--epoch_size", "1", "--overwrite", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    aside = [name for name in os.listdir(out) if name.startswith("previous-")]
    assert len(aside) == 1 and f"the earlier run's files are in {out / aside[0]}" in result.stdout
    assert folder_state(out / aside[0]) == before
    rows = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert [r["global_step"] for r in rows if r["kind"] == "step"] == [1, 2, 3]


def test_a_torn_last_log_line_is_left_out_with_a_warning_naming_file_and_line(tmp_path):
    from src.train.run_log import RunLog, read_log

    path = tmp_path / "train_log.jsonl"
    rows = [{"kind": "step", "global_step": step, "loss": 1.0} for step in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "step", "glo')
    with pytest.warns(UserWarning, match=r"train_log\.jsonl, line 4: a torn last line"):
        assert read_log(str(path)) == rows
    with pytest.warns(UserWarning):
        log = RunLog(str(path), keep_until_step=2)        # a resume from step 2
    log.write("step", global_step=3, loss=0.5)
    log.close()
    assert [r["global_step"] for r in read_log(str(path))] == [1, 2, 3]
    path.write_text('{"kind": "st\n' + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"train_log\.jsonl, line 1: not a JSON object"):
        read_log(str(path))


def test_a_checkpoint_that_only_partly_fits_is_refused_for_inference(one_run, demo_root,
                                                                     tmp_path):
    import mindspore as ms

    full = ms.load_checkpoint(str(one_run / "ssd-1_3.ckpt"))
    name = next(n for n in full if n.endswith("feature_extractor.module.conv1.weight"))
    partial = tmp_path / "one_tensor.ckpt"
    ms.save_checkpoint([{"name": name, "data": full[name]}], str(partial))
    result = run_script(["eval.py", "--config", "configs/demo.yaml", "--data_url", demo_root,
                         "--checkpoint_path", str(partial), "--output_dir",
                         str(tmp_path / "eval"), "--mindrecord_dir", str(tmp_path / "mr"),
                         "--run_platform", "CPU", "--progress", "off"], timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"checkpoint {partial} lacks" in result.stderr and " more" in result.stderr
    assert not (tmp_path / "eval" / "eval_results.json").exists()


def test_resuming_with_other_model_settings_says_why(one_run, demo_root, tmp_path):
    """Another class count or model shape (here the last feature map's channels): the tensors
    that differ are named, with what to do; no MindSpore traceback."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(one_run, out)
    before = folder_state(out)
    result = run_script(train_args(demo_root, out, "--epoch_size", "2", "--resume", "auto",
                                   "--extras_out_channels", "[256, 512, 512, 256, 256, 128]"),
                        timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "does not fit this run's model" in result.stderr and "other shapes" in result.stderr
    assert "(this run: (" in result.stderr and "--filter_weight" in result.stderr
    checkpoints = {n: d for n, d in folder_state(out).items() if n.endswith(".ckpt")}
    assert checkpoints == {n: d for n, d in before.items() if n.endswith(".ckpt")}
