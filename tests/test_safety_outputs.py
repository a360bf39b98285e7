"""predict.py and postprocess.py keep inputs and outputs apart: pictures as stored (EXIF
orientation ignored, as MindSpore's Decode), output names that never collide and never land on
an input, result files matched by the whole stem, no silent gaps in a score."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_script

ANCHORS = 8732


def rotated_jpeg(path, width=600, height=300):
    """A ``width`` x ``height`` JPEG (as stored) whose EXIF says: turn it 90 degrees (6)."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 4] = (250, 20, 20)        # something not symmetric
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_predict_decodes_pixels_as_stored_like_mindspore(tmp_path):
    import cv2
    from mindspore.dataset import vision

    from src.infer.predictor import read_image

    path = str(rotated_jpeg(tmp_path / "upright.jpg"))
    assert cv2.imread(path, cv2.IMREAD_COLOR).shape[:2] == (600, 300)   # OpenCV's default turns
    decoded = vision.Decode()(np.fromfile(path, np.uint8))              # RGB
    ours = read_image(path)                                             # BGR
    assert decoded.shape == ours.shape == (300, 600, 3)
    assert np.abs(ours[:, :, ::-1].astype(int) - decoded).mean() < 1.0
    with Image.open(path) as image:                 # postprocess.py's size: the stored one too
        assert (image.height, image.width) == (300, 600)


def test_picture_names_keep_a_jpg_and_a_png_apart():
    from src.infer.predictor import picture_name

    assert picture_name("in/a.jpg") == "a.jpg" and picture_name("in/a.png") == "a.png"
    assert picture_name("shot.1.JPG") == "shot.1.JPG"


def inputs(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"picture " + name.encode())
    return [str(folder / name) for name in names]


def test_predict_refuses_the_inputs_folder_as_output(tmp_path):
    from src.infer.predictor import check_outputs

    files = inputs(tmp_path / "in", "a.jpg", "a.png")
    with pytest.raises(ValueError, match=r"--output_dir .*in is the folder of the input .*a\.jpg"):
        check_outputs(files, str(tmp_path / "in"))
    with pytest.raises(ValueError, match="is the folder of the input"):   # one file, its folder
        check_outputs(files[1:], str(tmp_path / "in") + "/")
    os.symlink(tmp_path / "in", tmp_path / "link")
    with pytest.raises(ValueError, match="is the folder of the input"):   # the folder by a link
        check_outputs(files, str(tmp_path / "link"))
    check_outputs(files, str(tmp_path / "out"))                          # elsewhere: fine
    check_outputs(files, str(tmp_path / "in" / "predictions"))           # below it too


def test_predict_refuses_an_output_file_that_is_an_input(tmp_path):
    from src.infer.predictor import check_outputs

    files = inputs(tmp_path / "in", "a.jpg", "b.jpg")
    (tmp_path / "out").mkdir()
    os.symlink(files[1], tmp_path / "out" / "a.jpg")
    with pytest.raises(ValueError, match=r"out/a\.jpg is the input .*b\.jpg \(a link\)"):
        check_outputs(files, str(tmp_path / "out"))


def test_predict_script_refuses_and_touches_nothing(tmp_path):
    files = inputs(tmp_path / "in", "a.jpg")
    checkpoint = tmp_path / "ssd.ckpt"
    checkpoint.write_bytes(b"not read: the check comes first")
    result = run_script(["predict.py", "--checkpoint_path", str(checkpoint), "--image",
                         str(tmp_path / "in"), "--output_dir", str(tmp_path / "in"),
                         "--run_platform", "CPU"], timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: --output_dir {tmp_path / 'in'} is the folder of "
                                    f"the input {files[0]}")
    assert os.listdir(tmp_path / "in") == ["a.jpg"]
    assert (tmp_path / "in" / "a.jpg").read_bytes() == b"picture a.jpg"


def result_files(folder, stem, box, classes=4, score=0.9):
    """The C++ program's two files for one image: every anchor empty but the first, which holds
    ``box`` (normalised y-first) with ``score`` for class 1."""
    folder.mkdir(parents=True, exist_ok=True)
    boxes = np.zeros((ANCHORS, 4), np.float32)
    boxes[0] = box
    scores = np.zeros((ANCHORS, classes), np.float32)
    scores[0, 1] = score
    boxes.tofile(folder / f"{stem}_0.bin")
    scores.tofile(folder / f"{stem}_1.bin")
    assert os.path.getsize(folder / f"{stem}_0.bin") == 139_712


def annotation_file(path, names, size=100):
    images = [{"id": i + 1, "file_name": name, "width": size, "height": size}
              for i, name in enumerate(names)]
    annotations = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 40, 40],
                    "area": 1600, "iscrowd": 0} for i in range(len(names))]
    categories = [{"id": k, "name": f"class_{k}"} for k in (1, 2, 3)]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path


def postprocess(tmp_path, images, anno):
    return run_script(["postprocess.py", "--result_path", str(tmp_path / "results"),
                       "--img_path", str(images), "--anno_file", str(anno),
                       "--output_dir", str(tmp_path / "out")], timeout=300)


def test_postprocess_matches_dotted_names_by_their_whole_stem_and_names_absent_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("shot.1.png", "shot.2.png"):
        Image.new("RGB", (100, 100)).save(images / name)
    result_files(tmp_path / "results", "shot.1", [0.1, 0.1, 0.5, 0.5])      # the right box
    result_files(tmp_path / "results", "shot.2", [0.5, 0.5, 0.9, 0.9], score=0.5)   # a miss
    names = ["shot.1.png", "shot.2.png"] + [f"gone_{k}.png" for k in range(7)]
    anno = annotation_file(tmp_path / "gt.json", names)
    result = postprocess(tmp_path, images, anno)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"Scored 2 of the 9 images of {anno}; 7 not in {images} are left out of the score: "
            "gone_0.png, gone_1.png, gone_2.png, gone_3.png, gone_4.png and 2 more"
            in result.stdout), result.stdout
    found = json.load(open(tmp_path / "out" / "detections.json"))
    assert {r["image_id"]: r["bbox"] for r in found} == {1: [10.0, 10.0, 40.0, 40.0],
                                                         2: [50.0, 50.0, 40.0, 40.0]}
    scored = json.load(open(tmp_path / "out" / "eval_results.json"))
    assert scored["images"] == 2 and scored["mAP"] == pytest.approx(0.5, abs=0.01)


def test_postprocess_says_when_every_annotated_image_was_scored(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (100, 100)).save(images / "a.b.jpg")
    result_files(tmp_path / "results", "a.b", [0.1, 0.1, 0.5, 0.5])
    anno = annotation_file(tmp_path / "gt.json", ["a.b.jpg"])
    result = postprocess(tmp_path, images, anno)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Scored all 1 images of {anno}" in result.stdout


def test_postprocess_refuses_two_images_of_one_result_stem(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "a.png"):
        Image.new("RGB", (100, 100)).save(images / name)
    result_files(tmp_path / "results", "a", [0.1, 0.1, 0.5, 0.5])
    result = postprocess(tmp_path, images, annotation_file(tmp_path / "gt.json", ["a.jpg"]))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr == (f"error: {images}: a.jpg and a.png would share the result files "
                             "a_0.bin / a_1.bin (named by the file name without its last "
                             "extension); rename one of them\n")


def test_postprocess_refuses_two_annotation_records_of_one_file_name(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (100, 100)).save(images / "a.jpg")
    result_files(tmp_path / "results", "a", [0.1, 0.1, 0.5, 0.5])
    anno = annotation_file(tmp_path / "gt.json", ["train/a.jpg", "val/a.jpg"])
    result = postprocess(tmp_path, images, anno)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (f"error: {anno}: images 1 (train/a.jpg) and 2 (val/a.jpg) have the same file name "
            "a.jpg" in result.stderr)
