"""Nothing lost, round two: a disk that fills while a checkpoint or config.yaml is written, two
trainings started into one folder, TXT names with spaces, boxes whose far corner comes first,
eval.py with a checkpoint of another class count, files that follow the umask (and an ONNX
export that leaves its folder's mode alone), predict.py's picture names, Ctrl-C in the entry
points, export.py's own batch, an empty TXT file and config range errors."""
import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from src.config import Config, ConfigError
from src.config_loader import load_config
from src.data.records import DatasetError
from tests.conftest import ROOT, run_script
from tests.test_formats import QUIET, make_coco, make_voc, voc_xml, write_image

DEMO_CONFIG = os.path.join(ROOT, "configs", "demo.yaml")


def hidden(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


# --- 1. a full disk -----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (mounting needs root); skipped, saying why, where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a 4 MiB tmpfs, and mounting one needs root "
                    "(test_a_checkpoint_writers_own_temporary_file_goes_on_enospc runs anyway)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(disk)], check=False)   # busy: detach it


def fill(folder):
    """Write into ``folder`` until its disk is full."""
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_full_disk_leaves_no_partial_file_and_names_what_it_could_not_write(small_disk,
                                                                              graph_cpu):
    from mindspore import nn

    from src.train.checkpoint import CheckpointError, save_checkpoint
    from src.train.run_log import RunLog

    run = small_disk / "run"
    config = Config(lr=0.01)
    config.save(str(run / "config.yaml"))
    log = RunLog(str(run / "train_log.jsonl"))
    log.write("step", global_step=1, loss=1.0)
    cell = nn.Dense(1000, 700)                     # 2.8 MB of weights: one fits, two do not
    save_checkpoint(cell, str(run / "ssd-1_1.ckpt"))
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(cell, str(run / "ssd-2_1.ckpt"))
    message = str(caught.value)
    assert f"cannot write checkpoint {run / 'ssd-2_1.ckpt'} (No space left on device" in message
    assert f"the disk holding {run} is full" in message and "free space there" in message
    assert "already written are kept" in message
    # MindSpore's own temporary file went with the private folder it was written in
    assert sorted(os.listdir(run)) == ["config.yaml", "ssd-1_1.ckpt", "train_log.jsonl"]
    fill(small_disk)
    earlier = (run / "config.yaml").read_bytes()
    with pytest.raises(OSError) as caught:
        config.replace(lr=0.02).save(str(run / "config.yaml"))
    assert str(caught.value).startswith(f"cannot write {run / 'config.yaml'} (No space left")
    assert "the earlier config.yaml is kept as it was" in str(caught.value)
    assert (run / "config.yaml").read_bytes() == earlier and not hidden(run)
    with pytest.raises(OSError, match=r"cannot write .*train_log\.jsonl \(No space left.*"
                                         r"its rows so far are kept"):
        for step in range(2, 20000):
            log.write("step", global_step=step, loss=1.0, padding="x" * 200)
    with contextlib.suppress(OSError):
        log.file.close()


def test_a_checkpoint_writers_own_temporary_file_goes_on_enospc(tmp_path, graph_cpu,
                                                                monkeypatch):
    """MindSpore writes <name>.tmp beside the file it is asked for, then renames it: a full
    disk left that partial file (30 MB in the issue) beside the checkpoints."""
    import mindspore as ms
    from mindspore import nn

    from src.train.checkpoint import CheckpointError, save_checkpoint

    def full_disk(cell, name, **kwargs):
        with open(name[:-len(".ckpt")] + ".tmp", "wb") as partial:
            partial.write(b"partial checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device: the disk holding"):
        save_checkpoint(nn.Dense(2, 2), str(tmp_path / "ssd-2_1.ckpt"))
    assert os.listdir(tmp_path) == []


# --- 2. two trainings into one folder ---------------------------------------------------------

HOLDER = """
import sys
sys.path.insert(0, {root!r})
from src.train.run_folder import claim_run_folder
claim_run_folder({out!r}, "", False)
print("held", flush=True)
sys.stdin.read()        # holds the folder until the test closes its input
"""


def test_a_training_into_a_folder_another_run_holds_is_refused_naming_it(demo_root, tmp_path):
    """Two runs started at the same moment into one folder both went on (the second check of
    the folder came before the first run wrote anything); now the first to start holds it."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=ROOT, out=str(out))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        locks = hidden(out) if out.exists() else []
        result = run_script(["train.py", "--config", "configs/demo.yaml", "--data_url",
                             demo_root, "--output_dir", str(out), "--run_platform", "CPU",
                             "--epoch_size", "1", "--progress", "off", "--seed", "2",
                             "--mindrecord_dir", str(tmp_path / "mr")], timeout=600)
        assert result.returncode == 1, result.stdout[-2000:]
        assert result.stderr.startswith(f"error: {out} is in use by a training run that is "
                                        f"writing into it now (pid {holder.pid} on ")
        assert "nothing was changed" in result.stderr and "another --output_dir" in \
            result.stderr and "Traceback" not in result.stderr
        assert os.listdir(out) == locks == [".train.lock"]     # nothing of the second run
    finally:
        holder.communicate("", timeout=60)
    from src.train.run_folder import claim_run_folder, release_run_folder

    assert claim_run_folder(str(out), "", False) == ""      # free once its holder ended
    assert json.loads((out / ".train.lock").read_text())["pid"] == os.getpid()
    release_run_folder(str(out))


def test_a_data_check_into_a_folder_a_training_holds_is_refused(demo_root, tmp_path):
    """train.py --check_dataset writes config.yaml into its --output_dir: not into a folder
    that a training holds (its config.yaml stays the training's)."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=ROOT, out=str(out))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        (out / "config.yaml").write_text("the training's\n")
        result = run_script(["train.py", "--data_url", demo_root, "--output_dir", str(out),
                             "--check_dataset", "true", "--run_platform", "CPU"], timeout=600)
        assert result.returncode == 1 and "is in use by a training run" in result.stderr, \
            result.stderr[-2000:]
        assert (out / "config.yaml").read_text() == "the training's\n"
    finally:
        holder.communicate("", timeout=60)


# --- 3. TXT file names with spaces ------------------------------------------------------------

def test_a_txt_name_with_spaces_is_named_and_a_quoted_one_is_read(tmp_path):
    from src.data.check import check_source
    from src.data.readers import read_source

    name = "my shape ü 画像.jpg"
    write_image(str(tmp_path / "imgs" / name))
    write_image(str(tmp_path / "imgs" / "plain.jpg"))
    anno = tmp_path / "anno.txt"
    anno.write_text(f"imgs/plain.jpg 10,10,80,80,1\nimgs/{name} 60,50,160,90,1\n",
                    encoding="utf-8")
    config = Config(dataset="other", image_dir=str(tmp_path), anno_path=str(anno))
    source = read_source(config, "train")
    (problem,) = source.problems
    assert (problem.file, problem.where) == (str(anno), "line 2")
    assert f"the file name 'imgs/{name}' (that file exists) holds spaces" in problem.message
    assert f'double quotes ("imgs/{name}" ...)' in problem.message
    assert "rename the file without spaces" in problem.message
    report = check_source(source, progress=False)
    assert [str(p) for p in report.errors] == [str(problem)]    # not 'image file not found'
    anno.write_text(f'imgs/plain.jpg 10,10,80,80,1\n"imgs/{name}" 60,50,160,90,1\n',
                    encoding="utf-8")
    source = read_source(config, "train")
    assert not source.problems and source.records[1].path == str(tmp_path / "imgs" / name)
    assert source.records[1].boxes.tolist() == [[50, 60, 90, 160]]
    assert not check_source(source, progress=False).errors


# --- 4. a box whose far corner comes first ----------------------------------------------------

def test_a_box_with_its_corners_swapped_is_an_error_of_the_report_in_every_format(tmp_path):
    from src.data.sources import prepare_split

    make_coco(tmp_path / "coco", boxes=[(10, 20, 60, 70, 1), (100, 5, 60, 95, 2)])  # w = -40
    anno = tmp_path / "txt" / "anno.txt"
    write_image(str(tmp_path / "txt" / "images" / "img.jpg"))
    write_image(str(tmp_path / "txt" / "images" / "ok.jpg"))
    anno.write_text("images/ok.jpg 10,20,60,70,1\nimages/img.jpg 60,20,10,70,1 5,5,9,9,2\n")
    make_voc(tmp_path / "voc", xml=voc_xml(boxes=[(10, 70, 60, 20, 1)]))   # ymax < ymin
    configs = {
        "coco": (Config(coco_root=str(tmp_path / "coco"), num_classes=3),
                 "annotations[1] (id 2)", "bbox [100, 5, -40, 90] has a negative width"),
        "other": (Config(dataset="other", image_dir=str(tmp_path / "txt"), anno_path=str(anno),
                         num_classes=3), "line 2", "box 1 '60,20,10,70,1': x2 10 < x1 60"),
        "voc": (Config(dataset="voc", voc_root=str(tmp_path / "voc"), num_classes=2),
                "object 1", "<bndbox> xmin 11 ymin 71 xmax 60 ymax 20: ymax < ymin, a "
                            "malformed box")}
    for name, (config, where, what) in configs.items():
        config = config.replace(mindrecord_dir=str(tmp_path / f"mr-{name}"))
        with pytest.raises(DatasetError) as caught:
            prepare_split(config, "eval", str(tmp_path), **QUIET)
        report = str(caught.value)
        assert f"({where}): {what}" in report and "1 error(s)" in report, report
        assert "--skip_bad_samples" in report and "dropped" not in report.split("error(s)")[1]
    said = []
    prepared = prepare_split(configs["other"][0].replace(
        skip_bad_samples=True, mindrecord_dir=str(tmp_path / "mr-skip")), "eval", str(tmp_path),
        progress=False, log=said.append)
    assert prepared.images == 1 and prepared.check["skipped_images"] == 1
    assert "box 1 '60,20,10,70,1': x2 10 < x1 60" in "\n".join(said)


# --- 5. eval.py with a checkpoint of another class count --------------------------------------

@pytest.fixture(scope="module")
def two_class_checkpoint(graph_cpu, tmp_path_factory):
    """An untrained detector checkpoint of 2 classes (1 + background), as the demo's boxes."""
    import mindspore as ms

    from src.model import build_ssd

    path = tmp_path_factory.mktemp("two_classes") / "two_classes.ckpt"
    config = load_config(DEMO_CONFIG, num_classes=2, classes=("background", "circle"))
    ms.save_checkpoint(build_ssd(config), str(path))
    return str(path)


def test_eval_names_the_checkpoints_class_count_and_the_datas(two_class_checkpoint, demo_root,
                                                              tmp_path):
    from src.infer.evaluator import evaluate
    from src.model.weights import CheckpointError

    config = load_config(DEMO_CONFIG, coco_root=demo_root, classes=(),
                         checkpoint_path=two_class_checkpoint, output_dir=str(tmp_path / "ev"),
                         mindrecord_dir=str(tmp_path / "mr"), progress="off",
                         run_platform="CPU")
    trained = (f"the checkpoint {two_class_checkpoint} was trained for 1 class (2 with "
               "background)")
    for given in (0, 2):
        with pytest.raises(DatasetError) as caught:
            evaluate(config.replace(num_classes=given))
        message = str(caught.value)
        assert ("the data has 3 classes (4 with background: circle, square, triangle), but "
                f"{trained}: a checkpoint is scored on data of the classes it was trained for"
                ) in message
        assert "--num_classes" not in message and "--filter_weight" not in message
    with pytest.raises(CheckpointError) as caught:
        evaluate(config.replace(num_classes=4))
    assert str(caught.value) == (f"--num_classes 4, but {trained}: eval.py scores a checkpoint "
                                 "with the class count it was trained for. Leave --num_classes "
                                 "out (it is read from the checkpoint)")
    assert not (tmp_path / "ev" / "eval_results.json").exists()


# --- 6. the umask -------------------------------------------------------------------------------

@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_follow_the_umask(tmp_path, umask_022, demo_root, graph_cpu):
    from mindspore import nn

    from src.data.coco import read_coco
    from src.data.mindrecord import write_set
    from src.files import write_json
    from src.train.checkpoint import save_checkpoint
    from src.train.run_log import RunLog
    from src.visualize import plot_training_curves

    Config().save(str(tmp_path / "config.yaml"))
    write_json({"mAP": 0.5}, str(tmp_path / "eval_results.json"))
    log = RunLog(str(tmp_path / "train_log.jsonl"))
    log.write("step", epoch=1, global_step=1, loss=1.0, cls_loss=0.5, loc_loss=0.5, lr=0.1,
              finite=True)
    log.close()
    plot_training_curves(log.rows(), str(tmp_path / "loss_curve.png"))
    save_checkpoint(nn.Dense(2, 2), str(tmp_path / "ssd-1_1.ckpt"))
    write_set(read_coco(demo_root, "val2017").records, str(tmp_path / "mr"), "x", 2,
              {"inputs": {}}, progress=False)
    for name in ("config.yaml", "eval_results.json", "train_log.jsonl", "loss_curve.png"):
        assert mode(tmp_path / name) == 0o644, name
    assert mode(tmp_path / "ssd-1_1.ckpt") == 0o444       # read-only as MindSpore makes it
    modes = {name: mode(tmp_path / "mr" / name) for name in os.listdir(tmp_path / "mr")
             if not name.startswith(".")}
    assert set(modes) >= {"x0", "x0.db", "x1", "x1.db", "x.manifest.json"}
    assert set(modes.values()) == {0o644}, modes


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, two_class_checkpoint):
    """export.py --file_format ONNX with the training config and a bare --file_name, run in a
    folder of mode 0755 under umask 022."""
    folder = tmp_path_factory.mktemp("export")
    os.chmod(folder, 0o755)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "export.py"), "--config", DEMO_CONFIG,
         "--classes", "[background, circle]", "--ckpt_file", two_class_checkpoint,
         "--file_name", "ssd", "--file_format", "ONNX", "--run_platform", "CPU"],
        cwd=folder, capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result


def test_an_onnx_export_leaves_its_folders_mode_and_follows_the_umask(onnx_export):
    folder, _ = onnx_export
    assert mode(folder) == 0o755                         # MindSpore's writer made it 0700
    assert os.listdir(folder) == ["ssd.onnx"]            # no temporary folder left
    assert mode(folder / "ssd.onnx") == 0o444            # was 0400


# --- 7. predict.py's picture names ------------------------------------------------------------

def test_predict_pictures_keep_the_inputs_name_extension_and_format(tmp_path, umask_022):
    import cv2

    from src.infer.predictor import picture_name

    assert picture_name("in/a.jpg") == "a.jpg" and picture_name("in/a.png") == "a.png"
    assert picture_name("shot.1.JPG") == "shot.1.JPG"
    from src.infer.predictor import write_picture

    picture = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    for name in ("a.jpg", "a.png", "b.JPEG", "c.bmp"):
        write_picture(str(tmp_path / name), picture, f"in/{name}")
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "a.png", "b.JPEG", "c.bmp"]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "a.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert (tmp_path / "c.bmp").read_bytes()[:2] == b"BM"
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "a.png")), picture)  # lossless
    assert mode(tmp_path / "a.png") == 0o644


# --- 8. Ctrl-C ----------------------------------------------------------------------------------

HARNESS = """
import os, runpy, signal, sys, threading, time
sys.path.insert(0, {root!r})
MINDSPORE = os.sep + "mindspore" + os.sep

def stacks():
    for ident, frame in sys._current_frames().items():
        names, files = set(), []
        while frame is not None:
            names.add(frame.f_code.co_name)
            files.append(frame.f_code.co_filename)
            frame = frame.f_back
        yield ident, names, any(MINDSPORE in f for f in files)

calls = []   # post-processed batches: after the first, MindSpore has run a graph


def count_batches():
    cls = getattr(sys.modules.get("src.detections"), "PostProcessor", None)
    if cls is None or hasattr(cls.process_batch, "counted"):
        return
    original = cls.process_batch

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    counted.counted = True
    cls.process_batch = counted


def watch():
    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})  # as threads made later
    main = threading.main_thread().ident
    while True:
        count_batches()
        for ident, names, in_mindspore in stacks():
            if {condition}:
                time.sleep({delay})
                os.kill(os.getpid(), signal.SIGINT)
                return
        time.sleep(0.001)

threading.Thread(target=watch, daemon=True).start()
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def interrupted(argv, condition, cwd, delay=0.0, timeout=600):
    """Run an entry point with ``argv`` in ``cwd``; Ctrl-C (SIGINT) once ``condition`` (an
    expression of a thread's ``names``, ``in_mindspore``, ``ident``, ``main``, and ``calls``)
    holds."""
    code = HARNESS.format(root=ROOT, condition=condition, delay=delay,
                          argv=[os.path.join(ROOT, argv[0]), *argv[1:]])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def our_lines(stderr):
    """stderr without MindSpore's own log lines ([WARNING] ...)."""
    return [line for line in stderr.splitlines() if line and not line.startswith("[WARNING]")]


def test_ctrl_c_during_graph_compilation_stops_in_one_line_leaving_nothing(
        two_class_checkpoint, tmp_path):
    """It used to raise inside MindSpore's compiler: ~40 lines and rank_0/om/analyze_fail.ir in
    the current folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = interrupted(["export.py", "--config", DEMO_CONFIG, "--classes",
                          "[background, circle]", "--ckpt_file", two_class_checkpoint,
                          "--file_name", str(tmp_path / "out" / "ssd"), "--run_platform", "CPU"],
                         "ident == main and {'_save_mindir', 'compile'} <= names", cwd, 0.3)
    assert result.returncode == 130, result.stderr[-3000:]
    lines = [line for line in our_lines(result.stderr) if "stopping as soon as" not in line]
    assert lines == ["Ctrl-C (SIGINT): export.py stopped; nothing was written (an export "
                     "appears under its name only once complete)"], result.stderr[-3000:]
    assert os.listdir(cwd) == []                             # no rank_0/om/analyze_fail.ir
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_ctrl_c_during_inference_stops_in_one_line(two_class_checkpoint, tmp_path):
    """MindSpore's graph runs put a SIGINT handler of their own in place, which sent SIGTERM to
    the process: it died with status 143 and no word."""
    data = tmp_path / "data"
    path = make_coco(data, boxes=[(10, 20, 60, 70, 1)], category_ids=(1, 2),
                     images=(("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)))
    annotations = json.loads(open(path).read())
    annotations["categories"] = [{"id": 1, "name": "circle"}]    # the checkpoint's one class
    with open(path, "w") as f:
        json.dump(annotations, f)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = interrupted(["eval.py", "--config", DEMO_CONFIG, "--classes", "[]",
                          "--data_url", str(data), "--checkpoint_path", two_class_checkpoint,
                          "--output_dir", str(tmp_path / "eval"), "--eval_batch_size", "1",
                          "--run_platform", "CPU", "--progress", "off"],
                         "ident == main and in_mindspore and calls and 'infer' in names", cwd)
    assert result.returncode == 130, (result.stdout[-2000:], result.stderr[-3000:])
    lines = [line for line in our_lines(result.stderr) if "img/s]" not in line]  # progress
    assert lines == [
        f"Ctrl-C (SIGINT): eval.py stopped; none of its results are in {tmp_path / 'eval'} "
        "(they are written once every image is scored; an earlier run's are as they were)"]
    assert sorted(os.listdir(tmp_path / "eval")) == ["config.yaml", "mindrecord"]
    assert os.listdir(cwd) == []


def test_ctrl_c_in_the_data_check_stops_in_one_line(demo_root, tmp_path):
    result = interrupted(["src/data/check.py", "--data_url", demo_root, "--split", "train",
                          "--num_parallel_workers", "1"], "'inspect_image' in names", tmp_path,
                         timeout=120)
    assert result.returncode == 130, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == ("Ctrl-C (SIGINT): the data check stopped; it "
                                              "writes nothing")
    assert "Traceback" not in result.stderr


# --- 9. export.py's batch ---------------------------------------------------------------------

def test_export_takes_its_batch_from_its_own_flag_not_the_training_config(onnx_export):
    import onnx

    folder, result = onnx_export
    model = onnx.load(str(folder / "ssd.onnx"))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 3, 300, 300]                      # configs/demo.yaml has batch_size 4
    assert "Exported ssd.onnx (batch 1, ONNX)" in result.stdout


# --- 10. an empty TXT file, config ranges -----------------------------------------------------

def test_the_data_check_refuses_a_txt_file_without_images(tmp_path):
    anno = tmp_path / "anno.txt"
    anno.write_text("# no image yet\n\n")
    (tmp_path / "images").mkdir()
    result = subprocess.run([sys.executable, "-m", "src.data.check", "--dataset", "other",
                             "--image_dir", str(tmp_path), "--anno_path", str(anno),
                             "--split", "train"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert (f"error: {anno}: no image in TXT anno.txt: nothing to train or evaluate on; the "
            "file is empty or holds only blank and '#' lines") in result.stdout


def test_config_range_errors_name_the_file_and_the_allowed_range(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: -1\nepoch_size: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(f"{path}: lr: -1.0 is out of range: it must be 0 or "
                                        "above (peak learning rate")
    path.write_text("epoch_size: 0\n")
    result = run_script(["train.py", "--config", str(path)], timeout=120)
    assert result.returncode == 2
    assert (f"error: {path}: epoch_size: 0 is out of range: it must be above 0 (epochs to "
            "train)") in result.stderr
    result = run_script(["train.py", "--cls_bias_prior", "0.5"], timeout=120)
    assert ("error: --cls_bias_prior: 0.5 is out of range: it must be from 0 up to (not "
            "including) 0.5") in result.stderr
    with pytest.raises(ConfigError, match=r"^num_classes: 1 is out of range: it must be 0 or at "
                                          "least 2"):
        Config(num_classes=1).validate()
    shutil.rmtree(tmp_path)
