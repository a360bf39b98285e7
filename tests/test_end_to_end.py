"""The main job through its real entry points: demo data -> train.py -> eval.py."""
import json
import os

import pytest

from tests.conftest import run_script


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_script(["train.py", "--config", "configs/demo.yaml", "--data_url", demo_root,
                         "--output_dir", str(out / "train"), "--run_platform", "CPU",
                         "--batch_size", "4", "--epoch_size", "3", "--save_checkpoint_epochs",
                         "2", "--progress", "lines"])
    return out, result


def test_training_lowers_the_loss_and_writes_its_outputs(trained):
    out, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "trainable parameters, 8,732 default boxes, input 3x300x300" in text
    assert "Device: CPU, GRAPH_MODE, fp32, loss scale 1" in text
    assert "ETA" in text
    train_dir = out / "train"
    rows = [json.loads(line) for line in open(train_dir / "train_log.jsonl")]
    steps = [r for r in rows if r["kind"] == "step"]
    assert len(steps) == 9 and [r["global_step"] for r in steps] == list(range(1, 10))
    first, last = steps[:3], steps[-3:]
    assert sum(r["loss"] for r in last) < 0.7 * sum(r["loss"] for r in first)
    assert all(r["finite"] for r in steps)
    assert sorted(os.listdir(train_dir / "mindrecord"))[0].startswith("ssd.mindrecord")
    assert (train_dir / "ssd-2_3.ckpt").exists() and (train_dir / "ssd-3_3.ckpt").exists()
    assert (train_dir / "loss_curve.png").stat().st_size > 10_000
    assert "num_classes: 4" in (train_dir / "config.yaml").read_text()
    assert not [n for n in os.listdir(train_dir) if n.startswith(".tmp")]


def test_eval_prints_a_real_coco_summary(trained, demo_root):
    out, result = trained
    assert result.returncode == 0
    eval_dir = out / "eval"
    result = run_script(["eval.py", "--config", "configs/demo.yaml", "--data_url", demo_root,
                         "--checkpoint_path", str(out / "train" / "ssd-3_3.ckpt"),
                         "--output_dir", str(eval_dir), "--eval_batch_size", "4",
                         "--run_platform", "CPU", "--progress", "off"])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    summary = [line for line in lines if line.startswith(" Average")]
    assert len(summary) == 12 or "No detections" in result.stdout
    mAP = [line for line in lines if line.startswith("mAP: ")]
    assert len(mAP) == 1
    results = json.load(open(eval_dir / "eval_results.json"))
    assert results["images"] == 4 and float(mAP[0].split()[1]) == pytest.approx(results["mAP"])
    assert isinstance(json.load(open(eval_dir / "detections.json")), list)


def test_eval_refuses_a_checkpoint_for_another_class_count(trained, demo_root, tmp_path):
    out, _ = trained
    result = run_script(["eval.py", "--data_url", demo_root, "--num_classes", "4",
                         "--checkpoint_path", str(tmp_path / "missing.ckpt"),
                         "--output_dir", str(tmp_path), "--run_platform", "CPU"])
    assert result.returncode == 1 and "missing.ckpt" in result.stderr
    result = run_script(["eval.py", "--data_url", demo_root,
                         "--checkpoint_path", str(out / "train" / "ssd-3_3.ckpt"),
                         "--output_dir", str(tmp_path), "--run_platform", "CPU"])
    assert result.returncode == 1
    assert "num_classes" in result.stderr


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
                         "--checkpoint_path", str(out / "train" / "ssd-3_3.ckpt"),
                         "--output_dir", str(tmp_path / "eval"), "--run_platform", "CPU",
                         "--eval_batch_size", "4", "--progress", "off"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mAP: " in result.stdout
    truth = json.load(open(tmp_path / "eval" / "ground_truth.json"))
    assert len(truth["images"]) == 4 and len(truth["annotations"]) == len(data["annotations"])
    assert [c["name"] for c in truth["categories"]] == ["class_1", "class_2", "class_3"]
