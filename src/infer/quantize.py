"""int8 inference (``--quantize int8``): the checkpoint exported to ONNX
(``src.infer.deploy``, decoder included), quantized after training by NNCF for OpenVINO,
calibrated on training images, run by OpenVINO.

Calibration takes ``calibration_images`` images of the training split (spread evenly over it,
the same ones every time), preprocessed as evaluation does (``network_input``). The quantized
model is kept beside the checkpoint in ``<checkpoint>.int8/<key>/`` (OpenVINO IR: model.xml,
model.bin, and calibration.json saying how it was made); the key digests the checkpoint's
bytes, the number of images, the batch, the input size and the versions of NNCF and OpenVINO,
so a model is reused only when all of them match, and made again otherwise. Quantization is
post-training: it changes the detections a little, so eval.py measures, never assumes, what it
costs (docs/performance.md).
"""
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable, Optional

import numpy as np

from src.config import Config

QUANTIZE_CHOICES = ("none", "int8")
CACHE_SUFFIX = ".int8"
RECIPE = "nncf-ptq-1"   # changes when the way a model is made here changes


def calibration_batches(config: Config, batch_size: int, count: int) -> tuple:
    """(list of (batch_size, 3, H, W) float32 batches of ``count`` training images, the last
    padded with its first image; the number of images; where they came from)."""
    import cv2

    from src.data.readers import read_source
    from src.data.transforms import network_input

    try:
        source = read_source(config, "train")
    except ValueError as exc:
        raise ValueError(f"--quantize int8 calibrates on training images, and the training "
                         f"split cannot be read: {exc}") from None
    records = source.records
    if not records:
        raise ValueError(f"--quantize int8: {source.name} has no image to calibrate on")
    chosen = np.unique(np.linspace(0, len(records) - 1, min(count, len(records))).astype(int))
    images = []
    for index in chosen:
        pixels = cv2.imread(records[index].path, cv2.IMREAD_COLOR)
        if pixels is not None:
            images.append(network_input(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB),
                                        config.img_shape))
    if not images:
        raise ValueError(f"--quantize int8: none of the {len(chosen)} calibration images of "
                         f"{source.name} could be read")
    batches = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        batch += [batch[0]] * (batch_size - len(batch))
        batches.append(np.stack(batch))
    return batches, len(images), source.name


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict:
    import nncf
    import openvino

    return {"nncf": nncf.__version__, "openvino": openvino.__version__.split("-")[0],
            "recipe": RECIPE}


def cache_key(checkpoint_digest: str, images: int, batch_size: int, img_shape) -> dict:
    """What a cached model must have been made from to be reused."""
    return {"checkpoint_sha256": checkpoint_digest, "calibration_images": images,
            "batch_size": batch_size, "img_shape": list(img_shape), **versions()}


def cache_folder(checkpoint_path: str, key: dict) -> str:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(checkpoint_path + CACHE_SUFFIX, name)


def int8_model(config: Config, checkpoint_path: Optional[str], batch_size: int,
               log: Callable[[str], None] = print) -> str:
    """model.xml of the int8 model of ``checkpoint_path`` at ``batch_size``: the cached one when
    its key matches, else made now (and cached beside the checkpoint; in a temporary folder
    for the network's initial weights, ``checkpoint_path`` None)."""
    count = config.calibration_images
    digest = file_digest(checkpoint_path) if checkpoint_path else "initial-weights"
    if checkpoint_path:
        wanted = cache_key(digest, count, batch_size, config.img_shape)
        folder = cache_folder(checkpoint_path, wanted)
        marker = os.path.join(folder, "calibration.json")
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                made = json.load(f)
            if made.get("key") == wanted:
                log(f"int8: reusing {folder} (calibrated on {made['images']} images of "
                    f"{made['source']})")
                return os.path.join(folder, "model.xml")
    else:
        folder = tempfile.mkdtemp(prefix="ssd-int8-")
    batches, images, source = calibration_batches(config, batch_size, count)
    key = cache_key(digest, count, batch_size, config.img_shape)
    if checkpoint_path:
        os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".int8-", dir=os.path.dirname(folder) if checkpoint_path
                               else folder)
    try:
        quantize_into(config, checkpoint_path, batch_size, batches, staging)
        with open(os.path.join(staging, "calibration.json"), "w", encoding="utf-8") as f:
            json.dump({"key": key, "images": images, "source": source}, f, indent=1)
        if checkpoint_path:
            if os.path.isdir(folder):     # an earlier model of this key, incomplete
                shutil.rmtree(folder)
            os.replace(staging, folder)
        else:
            folder = staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"int8: calibrated on {images} training images of {source} (NNCF "
        f"{key['nncf']}, OpenVINO {key['openvino']}); saved {folder}")
    return os.path.join(folder, "model.xml")


def quantize_into(config: Config, checkpoint_path: Optional[str], batch_size: int, batches: list,
                  folder: str) -> None:
    """NNCF's post-training quantization of the exported model into ``folder``/model.xml."""
    import nncf
    import openvino

    from src.infer.deploy import export_model

    with tempfile.TemporaryDirectory(prefix="ssd-int8-onnx-") as scratch:
        onnx_path = export_model(config, checkpoint_path, os.path.join(scratch, "ssd"), "ONNX",
                                 batch_size, platform="CPU")
        model = openvino.Core().read_model(onnx_path)
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
        openvino.save_model(quantized, os.path.join(folder, "model.xml"))


def export_int8(config: Config, checkpoint_path: str, file_name: str, batch_size: int) -> str:
    """The int8 model of ``checkpoint_path`` (made, or taken from its cache) as
    ``<file_name>.xml`` and ``.bin``, each written whole (the .bin first, so an .xml is never
    there without its weights); returns the .xml's path."""
    from src.files import atomic_path

    made = int8_model(config, checkpoint_path, batch_size)
    stem = file_name[:-4] if file_name.endswith(".xml") else file_name
    for suffix in (".bin", ".xml"):
        with atomic_path(stem + suffix) as tmp:
            shutil.copyfile(os.path.splitext(made)[0] + suffix, tmp)
    return stem + ".xml"
