"""int8 inference: the cached model is reused only when everything it was made from matches;
the int8 model's outputs follow the float32 model's."""
import json
import os

import numpy as np
import pytest

from src.config import Config
from src.infer import quantize


def demo_config(demo_root, **changes):
    return Config(coco_root=demo_root, classes=("background", "circle", "square", "triangle"),
                  quantize="int8", **changes)


def test_the_int8_model_is_reused_only_when_checkpoint_images_batch_and_versions_match(
        demo_root, tmp_path, monkeypatch):
    made = []

    def fake_quantize(config, checkpoint_path, batch_size, batches, folder):
        made.append((batch_size, len(batches)))
        with open(os.path.join(folder, "model.xml"), "w") as f:
            f.write("<net/>")

    monkeypatch.setattr(quantize, "quantize_into", fake_quantize)
    checkpoint = tmp_path / "ssd-1_1.ckpt"
    checkpoint.write_bytes(b"weights one")
    messages = []
    config = demo_config(demo_root, calibration_images=5)

    def model(config=config, batch=2):
        return quantize.int8_model(config, str(checkpoint), batch, log=messages.append)

    first = model()
    assert made == [(2, 3)] and "calibrated on 5 training images of COCO train2017" in messages[-1]
    made_from = json.load(open(os.path.join(os.path.dirname(first), "calibration.json")))
    assert made_from["key"]["calibration_images"] == 5 and made_from["images"] == 5
    assert model() == first and len(made) == 1 and messages[-1].startswith("int8: reusing")
    others = [model(config=config.replace(calibration_images=6)), model(batch=1)]
    checkpoint.write_bytes(b"weights two")
    others.append(model())
    checkpoint.write_bytes(b"weights one")
    monkeypatch.setattr(quantize, "versions", lambda: {"nncf": "0", "openvino": "0",
                                                       "recipe": quantize.RECIPE})
    others.append(model())
    assert len(made) == 5 and len({first, *others}) == 5
    assert all(os.path.dirname(os.path.dirname(p)) == str(checkpoint) + quantize.CACHE_SUFFIX
               for p in [first, *others])
    os.remove(os.path.join(os.path.dirname(others[-1]), "calibration.json"))   # incomplete
    assert model() == others[-1] and len(made) == 6
    leftovers = [n for n in os.listdir(str(checkpoint) + quantize.CACHE_SUFFIX)
                 if n.startswith(".")]
    assert not leftovers


def test_export_writes_the_cached_int8_model_whole(demo_root, tmp_path, monkeypatch):
    """export.py --quantize int8: <file_name>.xml and .bin, copies of the cached model (made
    once: a second export reuses it)."""
    made = []

    def fake_quantize(config, checkpoint_path, batch_size, batches, folder):
        made.append(batch_size)
        for suffix, data in ((".xml", b"<net/>"), (".bin", b"weights")):
            with open(os.path.join(folder, "model" + suffix), "wb") as f:
                f.write(data)

    monkeypatch.setattr(quantize, "quantize_into", fake_quantize)
    checkpoint = tmp_path / "ssd.ckpt"
    checkpoint.write_bytes(b"weights")
    config = demo_config(demo_root, calibration_images=2)
    for name in ("a", "b"):
        path = quantize.export_int8(config, str(checkpoint), str(tmp_path / "out" / name), 8)
        assert path == str(tmp_path / "out" / f"{name}.xml")
        assert open(path, "rb").read() == b"<net/>"
        assert (tmp_path / "out" / f"{name}.bin").read_bytes() == b"weights"
    assert made == [8]
    assert sorted(os.listdir(tmp_path / "out")) == ["a.bin", "a.xml", "b.bin", "b.xml"]


def test_quantizing_without_training_images_says_so(tmp_path):
    config = Config(coco_root=str(tmp_path), quantize="int8")
    with pytest.raises(ValueError, match="--quantize int8 calibrates on training images, and "
                                         "the training split cannot be read"):
        quantize.calibration_batches(config, 1, 3)


def test_int8_outputs_follow_the_float32_model(demo_root, graph_cpu):
    """NNCF's int8 model of the same weights (calibrated on the demo's training images) against
    OpenVINO's float32 run of the same export, on the validation images: scores within 0.05,
    box corners within 0.05 of the image, and most scores far closer."""
    from src.data.readers import read_source
    from src.data.transforms import network_input
    from src.infer.backends import create_detector
    from src.infer.predictor import read_image

    config = demo_config(demo_root, calibration_images=8, num_classes=4)
    int8 = create_detector(config, None, "openvino", batch_size=4)
    float32 = create_detector(config.replace(quantize="none"), None, "openvino", batch_size=4)
    assert int8.precision == "int8" and float32.precision == "float32"
    records = read_source(config, "eval").records[:4]
    images = np.stack([network_input(read_image(r.path)[:, :, ::-1], config.img_shape)
                       for r in records])
    (boxes8, scores8), (boxes, scores) = int8(images), float32(images)
    assert scores8.shape == scores.shape and boxes8.shape == boxes.shape
    assert np.abs(scores8 - scores).max() < 0.05
    assert np.median(np.abs(scores8 - scores)) < 0.01
    assert np.abs(boxes8 - boxes).max() < 0.05
    assert not np.array_equal(scores8, scores)   # it did run another model
