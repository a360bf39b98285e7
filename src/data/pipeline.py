"""MindSpore data pipelines over a MindRecord set (spec 7.5 and 7.6).

Training batches: image (B, 3, H, W) float32, box (B, A, 4) float32 offsets, label (B, A) int32,
num_match (B, 1) int32, img_id (B, 1) int32. Evaluation batches: img_id (B, 1) int32, image
(B, 3, H, W) float32, image_shape (B, 2) float32 original (height, width).
"""
import mindspore.dataset as ds
from mindspore.dataset import vision

from src.data.transforms import MEAN_RGB, STD_RGB, EvalTransform, TrainTransform

TRAIN_COLUMNS = ["image", "box", "label", "num_match", "img_id"]
EVAL_COLUMNS = ["img_id", "image", "image_shape"]


def create_train_dataset(files, box_coder, batch_size, img_shape=(300, 300), shuffle=True,
                         num_shards=1, shard_id=0, num_workers=2, seed=1, epoch=0,
                         crop_rule="reference"):
    """One epoch of shuffled, augmented, encoded, batched training data (last partial batch
    dropped). The order and every random draw depend only on (seed, epoch), so an epoch can be
    replayed exactly, also from its middle with ``.skip(batches)``. With ``num_shards`` each
    shard takes every num_shards-th image of the same shuffled order (padded to equal size), so
    N shards of batch B hold, step by step, the same images as one pipeline of batch N * B."""
    ds.config.set_seed(seed * 100003 + epoch)
    data = ds.MindDataset(files, columns_list=["img_id", "image", "annotation"],
                          num_shards=num_shards if num_shards > 1 else None,
                          shard_id=shard_id if num_shards > 1 else None,
                          shuffle=shuffle, num_parallel_workers=num_workers)
    data = data.map(operations=vision.Decode(), input_columns=["image"],
                    num_parallel_workers=num_workers)
    data = data.map(operations=TrainTransform(box_coder, img_shape, crop_rule, seed, epoch),
                    input_columns=["image", "annotation", "img_id"],
                    output_columns=["image", "box", "label", "num_match", "img_id"],
                    num_parallel_workers=num_workers, python_multiprocessing=False)
    data = data.map(operations=[vision.Normalize(mean=MEAN_RGB, std=STD_RGB), vision.HWC2CHW()],
                    input_columns=["image"], num_parallel_workers=num_workers)
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
