"""predict.py takes what people point it at: folders (recursively on request), glob patterns
and videos, batched, with an annotated video back and detections per frame."""
import json
import os

import cv2
import numpy as np
import pytest

from src.infer.predictor import Input, list_inputs
from tests.conftest import run_script


def write_video(path, frames, fps, size=(64, 48)):
    codec = "MJPG" if path.endswith(".avi") else "mp4v"
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, size)
    for k in range(frames):
        writer.write(np.random.default_rng(k).integers(0, 256, (size[1], size[0], 3),
                                                       dtype=np.uint8))
    writer.release()


def video_facts(path):
    capture = cv2.VideoCapture(path)
    frames = 0
    while capture.read()[0]:
        frames += 1
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    capture.release()
    return frames, fps, size


def picture(path, size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.random.default_rng(len(path)).integers(0, 256, (*size[::-1], 3),
                                                                dtype=np.uint8))


def test_inputs_from_files_folders_patterns_and_videos(tmp_path):
    root = str(tmp_path)
    for name in ("in/a.jpg", "in/sub/b.png", "other/c.jpg", "other/d.bmp"):
        picture(os.path.join(root, name))
    open(os.path.join(root, "in", "notes.txt"), "w").close()
    write_video(os.path.join(root, "in", "clip.avi"), 3, 10.0)
    flat = list_inputs([os.path.join(root, "in")])
    assert [i.name for i in flat] == ["a.jpg", "clip.avi"] and flat[1].video
    deep = list_inputs([os.path.join(root, "in")], recursive=True)
    assert [i.name for i in deep] == ["a.jpg", "clip.avi", os.path.join("sub", "b.png")]
    pattern = list_inputs([os.path.join(root, "other", "*.jpg")])
    assert pattern == [Input(os.path.join(root, "other", "c.jpg"), "c.jpg")]
    with pytest.raises(ValueError, match=r"the pattern matches no image or video"):
        list_inputs([os.path.join(root, "other", "*.gif")])
    with pytest.raises(ValueError, match=r"no such file or folder"):
        list_inputs([os.path.join(root, "missing.jpg")])
    with pytest.raises(ValueError, match=r"--recursive true searches its subfolders"):
        list_inputs([make_empty(root)])
    assert [i.name for i in list_inputs([make_empty(root)], recursive=True)] == [
        os.path.join("deeper", "e.jpg")]


def make_empty(root):
    folder = os.path.join(root, "empty")
    os.makedirs(os.path.join(folder, "deeper"), exist_ok=True)
    picture(os.path.join(folder, "deeper", "e.jpg"))
    return folder


def test_predict_script_draws_folders_patterns_and_videos(tmp_path, graph_cpu):
    """One run over a folder (recursively), a pattern, a 10-frame AVI at 12 fps and a 4-frame
    MP4: pictures under their names and subfolders, each video back with its frame count, fps
    and size, detections.json with every frame's records; a video that cannot be read is an
    error naming it."""
    import mindspore as ms

    from src.config import Config
    from src.model import build_ssd

    checkpoint = str(tmp_path / "ssd.ckpt")
    ms.save_checkpoint(build_ssd(Config(num_classes=4)), checkpoint)
    root = str(tmp_path)
    picture(os.path.join(root, "in", "a.jpg"))
    picture(os.path.join(root, "in", "sub", "b.png"))
    picture(os.path.join(root, "more", "c.jpg"))
    write_video(os.path.join(root, "in", "clip.avi"), 10, 12.0)
    write_video(os.path.join(root, "in", "short.mp4"), 4, 5.0)
    out = tmp_path / "out"
    result = run_script(["predict.py", "--checkpoint_path", checkpoint, "--image",
                         os.path.join(root, "in"), os.path.join(root, "more", "*.jpg"),
                         "--recursive", "true", "--output_dir", str(out), "--run_platform",
                         "CPU", "--progress", "lines"])
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("a.jpg", os.path.join("sub", "b.png"), "c.jpg"):
        assert cv2.imread(str(out / name)) is not None, name
    assert video_facts(str(out / "clip.avi")) == (10, 12.0, (64, 48))
    assert video_facts(str(out / "short.mp4")) == (4, 5.0, (64, 48))
    records = json.load(open(out / "detections.json"))
    frames = {(r["file_name"], r.get("frame")) for r in records}
    assert {f for n, f in frames if n == "clip.avi"} == set(range(10))
    assert {f for n, f in frames if n == "short.mp4"} == set(range(4))
    assert {n for n, _ in frames} == {"a.jpg", os.path.join("sub", "b.png"), "c.jpg",
                                      "clip.avi", "short.mp4"}
    ids = {}
    for r in records:
        ids.setdefault((r["file_name"], r.get("frame")), set()).add(r["image_id"])
    assert all(len(v) == 1 for v in ids.values())
    assert len({next(iter(v)) for v in ids.values()}) == len(ids) == 17
    assert "clip.avi: 10 frames" in result.stdout

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.mp4").write_bytes(b"not a video")
    failed = run_script(["predict.py", "--checkpoint_path", checkpoint, "--image",
                         str(broken / "bad.mp4"), "--output_dir", str(tmp_path / "out2"),
                         "--run_platform", "CPU"])
    assert failed.returncode != 0 and "bad.mp4: cannot be opened as a video" in failed.stderr
    assert not (tmp_path / "out2").exists() or not any(
        n.endswith(".mp4") for n in os.listdir(tmp_path / "out2"))
