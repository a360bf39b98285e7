"""MindSpore data pipelines over a MindRecord set (spec 7.5 and 7.6).

Training batches: image (B, 3, H, W) float32 (uint8 when normalised on the device), box
(B, A, 4) float32 offsets, label (B, A) int32, num_match (B, 1) int32, img_id (B, 1) int64.
Evaluation batches: img_id (B, 1) int64, image (B, 3, H, W) float32, image_shape (B, 2)
float32 original (height, width).

An image that MindSpore cannot decode (possible when the set was converted with
``--check_images false``, which reads only image headers) stops the iteration with a
DatasetError that names it: the pipelines' iterators turn MindSpore's RuntimeError, which names
only the shard file, into that error after finding the image (``batches``,
``undecodable_images``). Such
images are not skipped inside the pipeline: every shard of a distributed run must yield the same
number of batches, and an epoch's length and order must not depend on what fails to decode, so
that resume and replay stay exact. The check at conversion leaves them out instead
(``--check_images true --skip_bad_samples true``).
"""
import contextlib
import json
import os
import re

import cv2
import mindspore.dataset as ds
import numpy as np
from mindspore.dataset import vision

from src.data.records import DatasetError
from src.data.transforms import MEAN_RGB, STD_RGB, EvalTransform, TrainTransform
from src.text import listed

TRAIN_COLUMNS = ["image", "box", "label", "num_match", "img_id"]
EVAL_COLUMNS = ["img_id", "image", "image_shape"]
DECODE_FAILED = "map operation: [Decode] failed"
GROUND_TRUTH_SUFFIX = ".ground_truth.json"     # as src.data.sources writes it
MAX_NAMED = 10


class EpochRows:
    """The encoded rows (image bytes, annotation, img_id, epoch) of training epochs
    ``first_epoch, first_epoch + 1, ...`` (``epochs`` of them), each epoch's whole batches only
    and the first from row ``skip_rows``: the source of one pipeline for a whole run.

    Each epoch's order is that of a MindRecord reader shuffled with the dataset seed
    ``seed * 100003 + epoch`` (one reader per epoch, reading bytes only: nothing is decoded or
    augmented there). A single MindDataset cannot give it: reading several epochs, MindSpore
    shuffles each epoch's order again from the previous one's, so epochs after the first would
    depend on where the run started. ``num_shards`` > 1: this shard's rows (every num_shards-th
    of the shuffled order, padded to equal size by MindSpore).

    Setting the dataset seed also seeds Python's ``random`` and numpy's global generator
    (``mindspore.dataset.config.set_seed``); nothing in training draws from them."""

    def __init__(self, files, batch_size: int, first_epoch: int = 0, epochs: int = 1,
                 skip_rows: int = 0, seed: int = 1, shuffle: bool = True, num_shards: int = 1,
                 shard_id: int = 0, num_workers: int = 2):
        self.files, self.seed, self.shuffle = list(files), int(seed), shuffle
        self.first_epoch, self.epochs, self.skip_rows = first_epoch, epochs, skip_rows
        self.sharding = ({"num_shards": num_shards, "shard_id": shard_id} if num_shards > 1
                         else {})
        self.num_workers = num_workers
        shard_rows = ds.MindDataset(self.files, columns_list=["img_id"], shuffle=False,
                                    **self.sharding).get_dataset_size()
        self.rows_per_epoch = shard_rows // batch_size * batch_size

    def __len__(self) -> int:
        return max(self.rows_per_epoch * self.epochs - self.skip_rows, 0)

    def reader(self, epoch: int):
        """Epoch ``epoch``'s MindRecord reader (columns img_id, image, annotation)."""
        ds.config.set_seed(self.seed * 100003 + epoch)
        return ds.MindDataset(self.files, columns_list=["img_id", "image", "annotation"],
                              shuffle=self.shuffle, num_parallel_workers=self.num_workers,
                              **self.sharding)

    def __iter__(self):
        for epoch in range(self.first_epoch, self.first_epoch + self.epochs):
            first = self.skip_rows if epoch == self.first_epoch else 0
            data = self.reader(epoch)
            if first:
                data = data.skip(first)
            rows = data.create_tuple_iterator(num_epochs=1, output_numpy=True)
            tag = np.array(epoch, np.int32)
            try:
                for _, (img_id, image, annotation) in zip(range(self.rows_per_epoch - first),
                                                          rows):
                    yield image, annotation, img_id, tag
            finally:
                rows.stop()


def create_train_dataset(files, box_coder, batch_size, img_shape=(300, 300), shuffle=True,
                         num_shards=1, shard_id=0, num_workers=2, seed=1, epoch=0,
                         crop_rule="reference", processes=False, uint8=False, epochs=1, skip=0):
    """Shuffled, augmented, encoded, batched training data of epochs ``epoch`` ..
    ``epoch + epochs - 1`` in one pipeline, the first from its batch ``skip`` (each epoch's last
    partial batch dropped). An epoch's order and every random draw depend only on (seed,
    epoch), so an epoch is the same batches whichever run it is part of and from wherever that
    run started (a resume, also from the middle of an epoch). With ``num_shards`` each shard
    takes every num_shards-th image of the same shuffled order (padded to equal size), so N
    shards of batch B hold, step by step, the same images as one pipeline of batch N * B.

    One pipeline serves a whole run: its worker threads or processes start once, and so does
    a data sink fed from it.

    ``processes``: the augmentation runs in worker processes instead of threads (the same
    batches: its draws depend on the image, not the worker). ``uint8``: images stay uint8
    (B, 3, H, W), to be normalised on the device (``normalize_images``).

    With ``processes`` OpenCV is set to one thread in this process (which then augments
    nothing itself), and so in the workers forked from it: each would otherwise run a thread
    per core. Set in a worker instead, it deadlocks there once this process has used OpenCV's
    thread pool (OpenCV 4.10, pthreads)."""
    if processes:
        cv2.setNumThreads(1)
    source = EpochRows(files, batch_size, epoch, epochs, skip * batch_size, seed, shuffle,
                       num_shards, shard_id, num_workers)
    data = ds.GeneratorDataset(source, column_names=["image", "annotation", "img_id", "epoch"],
                               shuffle=False, num_parallel_workers=1,
                               python_multiprocessing=False)
    data = data.map(operations=vision.Decode(), input_columns=["image"],
                    num_parallel_workers=num_workers)
    data = data.map(operations=TrainTransform(box_coder, img_shape, crop_rule, seed),
                    input_columns=["image", "annotation", "img_id", "epoch"],
                    output_columns=TRAIN_COLUMNS,
                    num_parallel_workers=num_workers, python_multiprocessing=processes)
    layout = [vision.HWC2CHW()] if uint8 else [vision.Normalize(mean=MEAN_RGB, std=STD_RGB),
                                               vision.HWC2CHW()]
    data = data.map(operations=layout, input_columns=["image"], num_parallel_workers=num_workers)
    data = data.project(TRAIN_COLUMNS)
    return data.batch(batch_size, drop_remainder=True)


def create_eval_dataset(files, batch_size, img_shape=(300, 300), num_workers=2):
    """Evaluation data in file order, resized and normalised; the last batch may be partial."""
    data = ds.MindDataset(files, columns_list=["img_id", "image"], shuffle=False,
                          num_parallel_workers=num_workers)
    data = data.map(operations=vision.Decode(), input_columns=["image"],
                    num_parallel_workers=num_workers)
    data = data.map(operations=EvalTransform(img_shape), input_columns=["image"],
                    output_columns=["image", "image_shape"], num_parallel_workers=num_workers,
                    python_multiprocessing=False)
    data = data.map(operations=[vision.Normalize(mean=MEAN_RGB, std=STD_RGB), vision.HWC2CHW()],
                    input_columns=["image"], num_parallel_workers=num_workers)
    data = data.project(EVAL_COLUMNS)
    return data.batch(batch_size, drop_remainder=False)


def undecodable_images(files) -> list:
    """Ids of the images of MindRecord ``files`` that MindSpore's Decode refuses, in file order.

    Every image is decoded by the same C++ op as in training, with MindSpore's error-samples
    mode set to SKIP for this one pass (the previous mode is restored): the ids missing from
    the output are the ones that failed.
    """
    columns = {"columns_list": ["img_id"], "shuffle": False}
    every = [int(row["img_id"][0]) for row in ds.MindDataset(files, **columns)
             .create_dict_iterator(num_epochs=1, output_numpy=True)]
    previous = ds.config.get_error_samples_mode()
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.SKIP)
    try:
        data = ds.MindDataset(files, columns_list=["img_id", "image"], shuffle=False)
        data = data.map(operations=vision.Decode(), input_columns=["image"]).project(["img_id"])
        decoded = {int(row["img_id"][0]) for row in data.create_dict_iterator(
            num_epochs=1, output_numpy=True)}
    finally:
        ds.config.set_error_samples_mode(previous)
    return [img_id for img_id in every if img_id not in decoded]


def _manifest_of(shard):
    """(prefix, manifest) of the set that holds the MindRecord file ``shard``, or (None, {})."""
    directory, name = os.path.split(shard)
    try:
        candidates = sorted(n for n in os.listdir(directory) if n.endswith(".manifest.json"))
    except OSError:
        return None, {}
    for candidate in candidates:
        try:
            with open(os.path.join(directory, candidate), encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and name in manifest.get("files", ()):
            return candidate[:-len(".manifest.json")], manifest
    return None, {}


def _file_names(directory, prefix, ids):
    """{id: file name} from the ground truth a VOC or TXT set holds; {} for COCO sets."""
    path = os.path.join(directory, f"{prefix}{GROUND_TRUTH_SUFFIX}")
    if not prefix or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            images = json.load(f).get("images", [])
    except (OSError, ValueError, AttributeError):
        return {}
    wanted = set(ids)
    return {image["id"]: image.get("file_name", "") for image in images
            if isinstance(image, dict) and image.get("id") in wanted}


def decode_error(message: str, files) -> DatasetError:
    """The DatasetError for MindSpore's Decode failure ``message`` in a pipeline over
    ``files``: the images that fail, found in the shard the message names (else in all files),
    and what to do about them."""
    files = list(files)
    named = re.search(r"The corresponding data file is: (.+?)\. ", message)
    shard = named.group(1) if named and named.group(1) in files else None
    scope = [shard] if shard else files
    bad = undecodable_images(scope)
    if not bad and shard:
        scope, bad = files, undecodable_images(files)
    raised = re.search(r"Error raised by (.+?)(?: Dump the abnormal image|\n|$)", message)
    cause = f" (MindSpore: Error raised by {raised.group(1).strip()})" if raised else ""
    prefix, manifest = _manifest_of(scope[0])
    where = os.path.join(os.path.dirname(scope[0]), prefix or os.path.basename(scope[0]))
    if not bad:
        return DatasetError(f"MindRecord set {where}: an image cannot be decoded{cause}, but a "
                            "second pass decoded every image of it; the file system may have "
                            "failed: run again")
    names = _file_names(os.path.dirname(scope[0]), prefix, bad[:MAX_NAMED])
    shown = listed([f"image id {i}" + (f" ({names[i]})" if names.get(i) else "") for i in bad],
                   MAX_NAMED)
    settings = manifest.get("description", {}).get("settings", {})
    if settings.get("check_images", False) is False:
        advice = ("the set was converted with --check_images false, which reads only the "
                  "image headers: convert it again with --check_images true, which decodes "
                  "every image and reports those that fail, and with --skip_bad_samples true "
                  "to leave them out")
    else:
        advice = ("the check at conversion decoded it without error (with PIL), MindSpore's "
                  "decoder does not: re-encode or remove it from the dataset")
    return DatasetError(f"MindRecord set {where}: {shown} cannot be decoded{cause}; "
                        f"{advice}")


def batches(data, files, dicts: bool = False, **iterator_options):
    """The rows of pipeline ``data`` over MindRecord ``files`` (tuples, or dicts with
    ``dicts``; ``iterator_options`` go to MindSpore's iterator), an image that cannot be decoded
    raising ``decode_error``'s DatasetError that names it instead of MindSpore's RuntimeError."""
    iterator = (data.create_dict_iterator(**iterator_options) if dicts
                else data.create_tuple_iterator(**iterator_options))
    try:
        while True:
            with decode_failures_named(files):
                try:
                    row = next(iterator)
                except StopIteration:
                    return
            yield row
    finally:   # also when closed early: the pipeline's threads and workers stop now
        iterator.stop()


@contextlib.contextmanager
def decode_failures_named(files):
    """MindSpore's RuntimeError for an image it cannot decode, raised inside, becomes
    ``decode_error``'s DatasetError naming the image in ``files``; other errors pass."""
    try:
        yield
    except RuntimeError as exc:
        if DECODE_FAILED not in str(exc):
            raise
        raise decode_error(str(exc), files) from None
