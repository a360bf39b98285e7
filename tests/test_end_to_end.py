"""The main job through its real entry points: demo data -> train.py -> eval.py, and from
the checkpoint to answers: export, the C++ program, postprocess.py, predict.py."""
import json
import os
import subprocess

import pytest
import yaml

from src.cpu import cpu_info
from tests.conftest import ROOT, run_script

DEMO_CONFIG = os.path.join(ROOT, "configs", "demo.yaml")


def demo_box_flags() -> list:
    """Flags of configs/demo.yaml's default-box keys: the ``trained`` checkpoint stores its
    boxes, and runs without --config need them."""
    from src.anchors import BOX_KEYS

    demo = yaml.safe_load(open(DEMO_CONFIG))
    return [text for key in BOX_KEYS if key in demo for text in (f"--{key}", json.dumps(demo[key]))]


BOX_FLAGS = demo_box_flags()


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """Nine steps of the demo's run. They start from the reference's zero class biases: the
    demo's prior (scores at 0.01) gives no score above min_score 0.1 in nine steps, and the
    chain after training needs detections to check."""
    out = tmp_path_factory.mktemp("run")
    result = run_script(["train.py", "--config", "configs/demo.yaml", "--data_url", demo_root,
                         "--output_dir", str(out / "train"), "--run_platform", "CPU",
                         "--batch_size", "4", "--epoch_size", "3", "--save_checkpoint_epochs",
                         "2", "--progress", "lines", "--cls_bias_prior", "0"])
    return out, result


def test_training_lowers_the_loss_and_writes_its_outputs(trained):
    out, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "trainable parameters, 8,732 default boxes, input 3x300x300" in text
    assert "Device: CPU, GRAPH_MODE, fp32, loss scale 1" in text
    assert f"CPU: {cpu_info().describe()}" in text          # the processor, read once
    assert "4 classes (background included; from the data)" in text
    assert "ETA" in text
    train_dir = out / "train"
    rows = [json.loads(line) for line in open(train_dir / "train_log.jsonl")]
    steps = [r for r in rows if r["kind"] == "step"]
    assert len(steps) == 9 and [r["global_step"] for r in steps] == list(range(1, 10))
    first, last = steps[:3], steps[-3:]
    assert sum(r["loss"] for r in last) < 0.7 * sum(r["loss"] for r in first)
    assert all(r["finite"] for r in steps)
    assert (train_dir / "mindrecord" / "ssd.mindrecord.manifest.json").exists()
    assert (train_dir / "ssd-2_3.ckpt").exists() and (train_dir / "ssd-3_3.ckpt").exists()
    assert (train_dir / "loss_curve.png").stat().st_size > 10_000
    assert "num_classes: 4" in (train_dir / "config.yaml").read_text()
    assert not [n for n in os.listdir(train_dir) if n.startswith(".tmp")]
    state = {}
    import mindspore as ms

    state = ms.load_checkpoint(str(train_dir / "ssd-3_3.ckpt"))
    assert "moments.feature_extractor.module.conv1.weight" in state
    assert int(state["train_state.global_step"].asnumpy()) == 9


def eval_demo(out, demo_root, folder, *flags):
    """eval.py on the demo's validation images with the trained checkpoint."""
    return run_script(["eval.py", "--config", "configs/demo.yaml", "--data_url", demo_root,
                       "--checkpoint_path", str(out / "train" / "ssd-3_3.ckpt"),
                       "--output_dir", str(folder), "--eval_batch_size", "4",
                       "--run_platform", "CPU", "--progress", "off", *flags])


def test_eval_prints_a_real_coco_summary(trained, demo_root):
    out, result = trained
    assert result.returncode == 0
    eval_dir = out / "eval"
    result = eval_demo(out, demo_root, eval_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    summary = [line for line in lines if line.startswith(" Average")]
    assert len(summary) == 12 or "No detections" in result.stdout
    map_lines = [line for line in lines if line.startswith("mAP: ")]
    assert len(map_lines) == 1
    results = json.load(open(eval_dir / "eval_results.json"))
    assert (results["images"] == 4
            and float(map_lines[0].split()[1]) == pytest.approx(results["mAP"]))
    assert isinstance(json.load(open(eval_dir / "detections.json")), list)
    truth = json.load(open(eval_dir / "ground_truth.json"))
    assert len(truth["images"]) == 4
    assert "circle" in result.stdout and "AP50" in result.stdout   # the per-class table
    assert f"CPU: {cpu_info().describe()}" in result.stdout


def test_eval_with_openvino_scores_as_the_mindspore_network(trained, demo_root, tmp_path):
    """eval.py --backend openvino (the checkpoint exported to ONNX in a temporary folder): the
    same images, detections and mAP as the MindSpore network's run."""
    out, _ = trained
    mindspore_dir = out / "eval"
    if not (mindspore_dir / "eval_results.json").exists():   # this test run alone
        assert eval_demo(out, demo_root, mindspore_dir).returncode == 0
    result = eval_demo(out, demo_root, tmp_path, "--backend", "openvino")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "openvino 2026.4.0 on the exported ONNX" in result.stdout
    ours = json.load(open(mindspore_dir / "eval_results.json"))
    theirs = json.load(open(tmp_path / "eval_results.json"))
    assert (theirs["images"], theirs["detections"]) == (ours["images"], ours["detections"])
    assert theirs["mAP"] == pytest.approx(ours["mAP"], abs=1e-3)
    assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(mindspore_dir))


def test_every_engine_gives_the_mindspore_detections(trained, demo_root):
    """onnxruntime and OpenVINO on the exported checkpoint: outputs within 1e-4 of the
    MindSpore network's, and the same detections after the one post-processing path."""
    import cv2
    import numpy as np

    from src.config_loader import load_config
    from src.data.transforms import network_input
    from src.detections import PostProcessor
    from src.device import init_device
    from src.infer.backends import BACKENDS, create_detector

    out, _ = trained
    init_device("CPU")
    config = load_config(DEMO_CONFIG, num_classes=4)
    names = sorted(os.listdir(os.path.join(demo_root, "val2017")))[:2]
    pictures = [cv2.imread(os.path.join(demo_root, "val2017", n)) for n in names]
    images = np.stack([network_input(cv2.cvtColor(p, cv2.COLOR_BGR2RGB)) for p in pictures])
    post = PostProcessor.from_config(config, [0, 1, 2, 3])
    found = {}
    for backend in BACKENDS:
        detector = create_detector(config, str(out / "train" / "ssd-3_3.ckpt"), backend, 2)
        boxes, scores = detector(images)
        found[backend] = (boxes, scores, [post.detect(boxes[i], scores[i], p.shape[:2])
                                          for i, p in enumerate(pictures)])
    boxes, scores, detections = found["mindspore"]
    assert sum(len(d[0]) for d in detections) > 0
    for backend in BACKENDS[1:]:
        their_boxes, their_scores, theirs = found[backend]
        np.testing.assert_allclose(their_boxes, boxes, atol=1e-4, err_msg=backend)
        np.testing.assert_allclose(their_scores, scores, atol=1e-4, err_msg=backend)
        for (b, s, c), (tb, ts, tc) in zip(detections, theirs):
            assert np.array_equal(c, tc), backend
            np.testing.assert_allclose(tb, b, atol=0.05, err_msg=backend)   # pixels
            np.testing.assert_allclose(ts, s, atol=1e-4, err_msg=backend)
    with pytest.raises(ValueError, match="exported for batch 2, got 1 images"):
        detector(images[:1])


def test_eval_refuses_a_missing_checkpoint_and_takes_the_checkpoints_class_count(
        trained, demo_root, tmp_path):
    out, _ = trained
    result = run_script(["eval.py", "--data_url", demo_root,
                         "--checkpoint_path", str(tmp_path / "missing.ckpt"),
                         "--output_dir", str(tmp_path), "--run_platform", "CPU"])
    assert result.returncode == 1 and "missing.ckpt" in result.stderr
    # TXT data numbers its classes: the one class used here is class 1 of the 4-class
    # checkpoint, which is scored on it (the data's highest class index says nothing of the
    # classes the checkpoint was trained for).
    anno = tmp_path / "one_class.txt"
    image = sorted(os.listdir(os.path.join(demo_root, "val2017")))[0]
    anno.write_text(f"val2017/{image} 10,10,120,120,1\n")
    result = run_script(["eval.py", "--dataset", "other", "--image_dir", demo_root,
                         "--anno_path", str(anno), "--output_dir", str(tmp_path / "eval"),
                         "--checkpoint_path", str(out / "train" / "ssd-3_3.ckpt"), *BOX_FLAGS,
                         "--run_platform", "CPU", "--progress", "off"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_classes 4: from the checkpoint" in result.stdout and "mAP: " in result.stdout


@pytest.fixture(scope="module")
def coco_checkpoint(graph_cpu, tmp_path_factory):
    """An untrained 81-class (COCO's 80 + background) detector checkpoint."""
    import mindspore as ms

    from src.config_loader import load_config
    from src.model import build_ssd

    path = tmp_path_factory.mktemp("coco_checkpoint") / "ssd_coco.ckpt"
    ms.save_checkpoint(build_ssd(load_config(num_classes=81)), str(path))
    return path


def test_eval_refuses_a_checkpoint_for_another_class_count(coco_checkpoint, demo_root, tmp_path):
    """The data has 4 classes, the checkpoint 81: refused naming both counts, without advice
    that does not apply to eval.py (--filter_weight is a training flag; no --num_classes makes
    81-class heads fit 4-class data)."""
    trained = f"the checkpoint {coco_checkpoint} was trained for 80 classes (81 with background)"
    result = run_script(["eval.py", "--config", "configs/demo.yaml", "--data_url", demo_root,
                         "--checkpoint_path", str(coco_checkpoint),
                         "--output_dir", str(tmp_path / "eval"), "--run_platform", "CPU",
                         "--progress", "off"])
    assert result.returncode == 1, result.stdout[-3000:]
    error = result.stderr
    assert "Traceback" not in error, error[-3000:]
    assert (f"the data has 3 classes (4 with background: circle, square, triangle), but "
            f"{trained}: a checkpoint is scored on data of the classes it was trained for"
            in error), error[-3000:]
    assert "--filter_weight" not in error and "--num_classes" not in error
    given = run_script(["eval.py", "--config", "configs/demo.yaml", "--data_url", demo_root,
                        "--num_classes", "4", "--checkpoint_path", str(coco_checkpoint),
                        "--output_dir", str(tmp_path / "eval"), "--run_platform", "CPU"])
    assert given.returncode == 1 and given.stderr == (
        f"error: --num_classes 4, but {trained}: eval.py scores a checkpoint with the class "
        "count it was trained for. Leave --num_classes out (it is read from the checkpoint)\n")


def test_eval_on_txt_data_writes_its_ground_truth(trained, demo_root, tmp_path):
    out, _ = trained
    data = json.load(open(os.path.join(demo_root, "annotations", "instances_val2017.json")))
    lines = []
    for image in data["images"]:
        boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"]]
        labels = [a["category_id"] for a in data["annotations"] if a["image_id"] == image["id"]]
        lines.append(" ".join([f"val2017/{image['file_name']}"] + [
            f"{x},{y},{x + w},{y + h},{c}" for (x, y, w, h), c in zip(boxes, labels)]))
    anno = tmp_path / "val.txt"
    anno.write_text("\n".join(lines) + "\n")
    result = run_script(["eval.py", "--dataset", "other", "--image_dir", demo_root,
                         "--anno_path", str(anno), "--num_classes", "4",
                         "--checkpoint_path", str(out / "train" / "ssd-3_3.ckpt"), *BOX_FLAGS,
                         "--output_dir", str(tmp_path / "eval"), "--run_platform", "CPU",
                         "--eval_batch_size", "4", "--progress", "off"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mAP: " in result.stdout
    truth = json.load(open(tmp_path / "eval" / "ground_truth.json"))
    assert len(truth["images"]) == 4 and len(truth["annotations"]) == len(data["annotations"])
    assert [c["name"] for c in truth["categories"]] == ["class_1", "class_2", "class_3"]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """MINDIR and ONNX exports (batch 2) of the trained checkpoint, and its OpenCV form."""
    out, _ = trained
    folder = tmp_path_factory.mktemp("export")
    paths = {}
    for file_format in ("MINDIR", "ONNX"):
        result = run_script(["export.py", "--ckpt_file", str(out / "train" / "ssd-3_3.ckpt"),
                             *BOX_FLAGS, "--num_classes", "4", "--file_name", str(folder / "ssd"),
                             "--file_format", file_format, "--batch_size", "2",
                             "--device_target", "CPU",
                             *(["--opencv", "true"] if file_format == "ONNX" else [])])
        assert result.returncode == 0, result.stderr[-3000:]
        paths[file_format] = str(folder / f"ssd.{file_format.lower()}")
    paths["OPENCV"] = str(folder / "ssd.opencv.onnx")
    return paths


def live_outputs(checkpoint, images):
    import mindspore as ms

    from src.config_loader import load_config
    from src.device import init_device
    from src.model import build_inference_network

    init_device("CPU")
    net = build_inference_network(load_config(DEMO_CONFIG, num_classes=4), checkpoint)
    boxes, scores = net(ms.Tensor(images))
    return boxes.asnumpy(), scores.asnumpy()


def test_exports_match_the_live_network(trained, exported):
    import mindspore as ms
    import numpy as np
    import onnxruntime

    out, _ = trained
    images = np.random.default_rng(0).normal(size=(2, 3, 300, 300)).astype(np.float32)
    boxes, scores = live_outputs(str(out / "train" / "ssd-3_3.ckpt"), images)
    assert boxes.shape == (2, 8732, 4) and scores.shape == (2, 8732, 4)
    graph = ms.nn.GraphCell(ms.load(exported["MINDIR"]))
    mindir_boxes, mindir_scores = (x.asnumpy() for x in graph(ms.Tensor(images)))
    np.testing.assert_allclose(mindir_boxes, boxes, atol=1e-5)
    np.testing.assert_allclose(mindir_scores, scores, atol=1e-5)
    for key in ("ONNX", "OPENCV"):
        session = onnxruntime.InferenceSession(exported[key], providers=["CPUExecutionProvider"])
        onnx_boxes, onnx_scores = session.run(None, {session.get_inputs()[0].name: images})
        np.testing.assert_allclose(onnx_boxes, boxes, atol=1e-4, err_msg=key)
        np.testing.assert_allclose(onnx_scores, scores, atol=1e-4, err_msg=key)


def test_air_export_needs_ascend(trained, tmp_path):
    out, _ = trained
    result = run_script(["export.py", "--ckpt_file", str(out / "train" / "ssd-3_3.ckpt"),
                         "--num_classes", "4", "--file_name", str(tmp_path / "ssd"),
                         "--file_format", "AIR", "--device_target", "CPU"])
    assert result.returncode == 1 and "AIR export needs an Ascend" in result.stderr


def test_a_checkpoint_is_not_decoded_against_other_default_boxes(trained, demo_root, tmp_path):
    """The demo checkpoint without its box settings (the reference's defaults instead):
    export.py and eval.py refuse before any work, naming the keys and the flags to give."""
    from src.anchors import BOX_KEYS, box_flags

    out, _ = trained
    checkpoint = str(out / "train" / "ssd-3_3.ckpt")
    export = run_script(["export.py", "--ckpt_file", checkpoint, "--num_classes", "4",
                         "--file_name", str(tmp_path / "export" / "ssd"),
                         "--device_target", "CPU"])
    evaluation = run_script(["eval.py", "--data_url", demo_root, "--checkpoint_path",
                             checkpoint, "--output_dir", str(tmp_path / "eval"),
                             "--run_platform", "CPU"])
    demo = yaml.safe_load(open(DEMO_CONFIG))
    flags = box_flags({key: demo[key] for key in BOX_KEYS if key in demo})
    for result in (export, evaluation):
        error = result.stderr
        assert result.returncode == 1 and "Traceback" not in error, error[-3000:]
        assert f"{checkpoint} was trained with other default boxes than this run's" in error
        assert f"min_scale {demo['min_scale']} (this run: 0.2)" in error and flags in error
    assert not (tmp_path / "export").exists() and not (tmp_path / "eval").exists()


@pytest.fixture(scope="module")
def png_dataset(demo_root, tmp_path_factory):
    """The demo's validation images as PNG files (lossless: every decoder sees the same
    pixels) in a COCO layout, with their annotation file."""
    import cv2

    root = tmp_path_factory.mktemp("png")
    data = json.load(open(os.path.join(demo_root, "annotations", "instances_val2017.json")))
    os.makedirs(root / "val2017")
    for image in data["images"]:
        name = image["file_name"].replace(".jpg", ".png")
        picture = cv2.imread(os.path.join(demo_root, "val2017", image["file_name"]))
        cv2.imwrite(str(root / "val2017" / name), picture)
        image["file_name"] = name
    os.makedirs(root / "annotations")
    with open(root / "annotations" / "instances_val2017.json", "w") as f:
        json.dump(data, f)
    return root


def test_cpp_program_postprocess_and_eval_agree(trained, exported, png_dataset, tmp_path):
    import numpy as np

    from src.data.transforms import network_input

    out, _ = trained
    anno = png_dataset / "annotations" / "instances_val2017.json"
    result = subprocess.run(["bash", "scripts/run_infer_cpp.sh", exported["OPENCV"],
                             str(png_dataset / "val2017"), "cpu", str(anno), "CPU", "--",
                             "--num_classes", "4"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, INFER_OUTPUT_PATH=str(tmp_path / "infer"),
                                     CPP_INFER_FLAGS="--batch_size 2"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    timing = (tmp_path / "infer" / "time_Result" / "test_perform_static.txt").read_text()
    assert "NN inference cost average time" in timing and "infer_count 2" in timing
    results = tmp_path / "infer" / "result_Files"
    names = sorted(os.listdir(png_dataset / "val2017"))
    assert sorted(os.listdir(results)) == sorted(
        f"{n[:-4]}_{k}.bin" for n in names for k in (0, 1))
    assert os.path.getsize(results / f"{names[0][:-4]}_0.bin") == 139_712
    assert os.path.getsize(results / f"{names[0][:-4]}_1.bin") == 8732 * 4 * 4
    import cv2

    images = np.stack([network_input(cv2.cvtColor(cv2.imread(str(png_dataset / "val2017" / n)),
                                                   cv2.COLOR_BGR2RGB)) for n in names[:2]])
    boxes, scores = live_outputs(str(out / "train" / "ssd-3_3.ckpt"), images)
    np.testing.assert_allclose(np.fromfile(results / f"{names[0][:-4]}_0.bin", np.float32),
                               boxes[0].ravel(), atol=1e-4)
    np.testing.assert_allclose(np.fromfile(results / f"{names[1][:-4]}_1.bin", np.float32),
                               scores[1].ravel(), atol=1e-4)
    cpp_map = float(result.stdout.split("mAP: ")[1].split()[0])
    again = subprocess.run(result.args, cwd=ROOT, capture_output=True, text=True, timeout=900,
                           env=dict(os.environ, INFER_OUTPUT_PATH=str(tmp_path / "infer"),
                                    CPP_INFER_FLAGS="--batch_size 2", INFER_OVERWRITE="1"))
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    aside, = [p for p in (tmp_path / "infer").iterdir() if p.name.startswith("previous-")]
    assert sorted(os.listdir(aside)) == ["acc.log", "build.log", "infer.log", "result_Files",
                                         "time_Result"]
    assert sorted(os.listdir(aside / "result_Files")) == sorted(os.listdir(results))
    assert float(again.stdout.split("mAP: ")[1].split()[0]) == cpp_map
    evaluation = run_script(["eval.py", "--data_url", str(png_dataset), "--num_classes", "4",
                             "--checkpoint_path", str(out / "train" / "ssd-3_3.ckpt"), *BOX_FLAGS,
                             "--output_dir", str(tmp_path / "eval"), "--run_platform", "CPU",
                             "--progress", "off"])
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    eval_map = float(evaluation.stdout.split("mAP: ")[1].split()[0])
    assert abs(cpp_map - eval_map) < 1e-3


def test_cpp_program_writes_81_class_score_files_of_2_829_168_bytes(coco_checkpoint,
                                                                     demo_root, tmp_path):
    """Spec 11 and 17: at 81 classes the C++ program's <stem>_1.bin holds 8732 x 81 float32
    scores, 2,829,168 bytes, next to the 139,712-byte <stem>_0.bin boxes."""
    import shutil

    import numpy as np

    result = run_script(["export.py", "--ckpt_file", str(coco_checkpoint), "--num_classes", "81",
                         "--file_name", str(tmp_path / "ssd"), "--file_format", "ONNX",
                         "--batch_size", "1", "--device_target", "CPU", "--opencv", "true"])
    assert result.returncode == 0, result.stderr[-3000:]
    images = tmp_path / "images"
    images.mkdir()
    name = sorted(os.listdir(os.path.join(demo_root, "val2017")))[0]
    shutil.copy(os.path.join(demo_root, "val2017", name), images / name)
    build = subprocess.run(["bash", "ascend310_infer/build.sh"], cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    run = subprocess.run([os.path.join(ROOT, "ascend310_infer", "out", "main"), "--model_path",
                          str(tmp_path / "ssd.opencv.onnx"), "--dataset_path", str(images),
                          "--device_type", "CPU", "--result_dir", str(tmp_path / "result_Files"),
                          "--time_dir", str(tmp_path / "time_Result")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    stem = name.split(".")[0]
    scores_file = tmp_path / "result_Files" / f"{stem}_1.bin"
    boxes_file = tmp_path / "result_Files" / f"{stem}_0.bin"
    assert os.path.getsize(scores_file) == 2_829_168 == 8732 * 81 * 4
    assert os.path.getsize(boxes_file) == 139_712 == 8732 * 4 * 4
    scores = np.fromfile(scores_file, np.float32).reshape(8732, 81)
    boxes = np.fromfile(boxes_file, np.float32).reshape(8732, 4)
    assert scores.min() >= 0 and scores.max() <= 1 and boxes.min() >= 0 and boxes.max() <= 1


def test_predict_draws_boxes(trained, demo_root, tmp_path):
    import cv2
    import numpy as np

    out, _ = trained
    image = os.path.join(demo_root, "val2017", sorted(os.listdir(
        os.path.join(demo_root, "val2017")))[0])
    result = run_script(["predict.py", *BOX_FLAGS, "--checkpoint_path",
                         str(out / "train" / "ssd-3_3.ckpt"),
                         "--num_classes", "4", "--image", image, "--output_dir",
                         str(tmp_path), "--draw_threshold", "0", "--run_platform", "CPU"])
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.load(open(tmp_path / "detections.json"))
    assert found and {r["file_name"] for r in found} == {os.path.basename(image)}
    assert found[0]["class"] in ("circle", "square", "triangle") and found[0]["image_id"] == 1
    assert set(found[0]) == {"image_id", "category_id", "bbox", "score", "file_name", "class"}
    before = cv2.imread(image)
    after = cv2.imread(str(tmp_path / os.path.basename(image)))    # the input's own name
    assert before.shape == after.shape
    x, y, w, h = (int(round(v)) for v in found[0]["bbox"])
    edge = after[min(y + h // 2, after.shape[0] - 1), max(x, 0)].astype(int)
    assert np.abs(edge - before[min(y + h // 2, before.shape[0] - 1), max(x, 0)]).sum() > 30
    far = np.abs(after.astype(int) - before.astype(int)).sum(axis=2) > 0
    assert far.any() and not far.all()


def exif_turned_copies(source, folder):
    """``plain.jpg`` and ``turned.jpg``: the same JPEG data of ``source``'s pixels, the second
    with EXIF orientation 6 (turn 90 degrees to show); returns the stored (height, width)."""
    from PIL import Image

    with Image.open(source) as image:
        pixels = image.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels.save(folder / "plain.jpg", quality=90)
    pixels.save(folder / "turned.jpg", quality=90, exif=exif)
    return pixels.height, pixels.width


def test_predict_keeps_a_jpg_and_a_png_apart_and_draws_pixels_as_stored(trained, demo_root,
                                                                         tmp_path):
    import cv2
    import numpy as np
    from mindspore.dataset import vision

    out, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(os.listdir(os.path.join(demo_root, "val2017")))
    first = cv2.imread(os.path.join(demo_root, "val2017", names[0]))
    cv2.imwrite(str(images / "a.jpg"), first)
    cv2.imwrite(str(images / "a.png"), cv2.imread(os.path.join(demo_root, "val2017", names[1])))
    stored = exif_turned_copies(os.path.join(demo_root, "val2017", names[2]), images)
    os.remove(images / "plain.jpg")
    assert stored[0] != stored[1]
    before = {n: (images / n).read_bytes() for n in os.listdir(images)}
    result = run_script(["predict.py", *BOX_FLAGS, "--checkpoint_path",
                         str(out / "train" / "ssd-3_3.ckpt"),
                         "--num_classes", "4", "--image", str(images), "--output_dir",
                         str(tmp_path / "out"), "--draw_threshold", "0", "--run_platform", "CPU"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert {n: (images / n).read_bytes() for n in os.listdir(images)} == before
    assert sorted(os.listdir(tmp_path / "out")) == [
        "a.jpg", "a.png", "config.yaml", "detections.json", "turned.jpg"]
    assert cv2.imread(str(tmp_path / "out" / "a.jpg")).shape == first.shape
    assert (tmp_path / "out" / "a.png").read_bytes()[:4] == b"\x89PNG"    # the input's format
    # The turned JPEG is drawn as stored, the size MindSpore's Decode (training, eval) gives it.
    decoded = vision.Decode()(np.fromfile(images / "turned.jpg", np.uint8))
    drawn = cv2.imread(str(tmp_path / "out" / "turned.jpg"))
    assert drawn.shape == decoded.shape == (*stored, 3)
    assert cv2.imread(str(images / "turned.jpg")).shape[:2] == stored[::-1]   # OpenCV's default
    found = json.load(open(tmp_path / "out" / "detections.json"))
    assert {r["file_name"] for r in found} == {"a.jpg", "a.png", "turned.jpg"}
    for record in found:
        if record["file_name"] == "turned.jpg":
            x, y, w, h = record["bbox"]
            assert x + w <= stored[1] + 1e-3 and y + h <= stored[0] + 1e-3
    # Several --image arguments (make demo passes a few files); a file name twice is refused
    # before anything is written.
    picked = run_script(["predict.py", *BOX_FLAGS, "--checkpoint_path",
                         str(out / "train" / "ssd-3_3.ckpt"),
                         "--num_classes", "4", "--image", str(images / "a.jpg"),
                         str(images / "a.png"), "--output_dir", str(tmp_path / "two"),
                         "--run_platform", "CPU"])
    assert picked.returncode == 0, picked.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "two")) == [
        "a.jpg", "a.png", "config.yaml", "detections.json"]
    twice = run_script(["predict.py", *BOX_FLAGS, "--checkpoint_path",
                        str(out / "train" / "ssd-3_3.ckpt"),
                        "--num_classes", "4", "--image", str(images), str(images / "a.jpg"),
                        "--output_dir", str(tmp_path / "twice"), "--run_platform", "CPU"])
    assert twice.returncode == 1 and "a.jpg named more than once" in twice.stderr
    assert not (tmp_path / "twice").exists()


def test_cpp_program_names_results_by_the_whole_stem_and_ignores_orientation(
        trained, exported, demo_root, tmp_path):
    """shot.1.png and shot.2.png get shot.1_*.bin and shot.2_*.bin (not one shot_*.bin), which
    postprocess.py finds; a JPEG with EXIF orientation 6 gives the results of its pixels as
    stored; a.jpg next to a.png is refused before any work."""
    import cv2
    import numpy as np

    build = subprocess.run(["bash", "ascend310_infer/build.sh"], cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]

    def infer(folder, results):
        return subprocess.run(
            [os.path.join(ROOT, "ascend310_infer", "out", "main"), "--model_path",
             exported["OPENCV"], "--dataset_path", str(folder), "--batch_size", "2",
             "--result_dir", str(results), "--time_dir", str(tmp_path / "time")],
            cwd=ROOT, capture_output=True, text=True, timeout=600)

    images = tmp_path / "images"
    images.mkdir()
    data = json.load(open(os.path.join(demo_root, "annotations", "instances_val2017.json")))
    for image, name in zip(data["images"], ("shot.1.png", "shot.2.png")):
        cv2.imwrite(str(images / name),
                    cv2.imread(os.path.join(demo_root, "val2017", image["file_name"])))
        image["file_name"] = name
    exif_turned_copies(os.path.join(demo_root, "val2017", data["images"][2]["file_name"]),
                       images)
    data["images"] = data["images"][:2]
    data["annotations"] = [a for a in data["annotations"]
                           if a["image_id"] in {i["id"] for i in data["images"]}]
    anno = tmp_path / "gt.json"
    anno.write_text(json.dumps(data))
    run = infer(images, tmp_path / "results")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    results = tmp_path / "results"
    assert sorted(os.listdir(results)) == [f"{stem}_{k}.bin" for stem in (
        "plain", "shot.1", "shot.2", "turned") for k in (0, 1)]
    for k in (0, 1):
        turned, plain = (results / f"{stem}_{k}.bin" for stem in ("turned", "plain"))
        assert turned.read_bytes() == plain.read_bytes()
    assert (results / "shot.1_1.bin").read_bytes() != (results / "shot.2_1.bin").read_bytes()
    scored = run_script(["postprocess.py", "--result_path", str(results), "--img_path",
                         str(images), "--anno_file", str(anno), "--output_dir",
                         str(tmp_path / "post")])
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert f"Scored all 2 images of {anno}" in scored.stdout
    assert "2 file(s) of" in scored.stdout and "mAP: " in scored.stdout   # plain, turned: unlisted

    clash = tmp_path / "clash"
    clash.mkdir()
    for name in ("a.jpg", "a.png"):
        cv2.imwrite(str(clash / name), np.zeros((64, 64, 3), np.uint8))
    run = infer(clash, tmp_path / "clash_results")
    assert run.returncode == 1
    assert f"{clash}/a.jpg and {clash}/a.png would both write a_0.bin and a_1.bin" in run.stderr
    assert not os.path.exists(tmp_path / "clash_results")
