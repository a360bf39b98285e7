"""Learning rate: linear warm-up then cosine decay, one value per global step (spec 8.3).

With T = epochs * steps_per_epoch and W = warmup_epochs * steps_per_epoch:
``lr_i = lr_init + (lr_max - lr_init) i / W`` for i < W, then
``lr_i = lr_end + (lr_max - lr_end) (1 + cos(pi (i - W) / (T - W))) / 2``.

The in-graph schedule reads the table at ``min(step, T - 1)``, so a resumed run continues at its
own step and never reads past the end (the reference did: spec defect 7).
"""
import mindspore as ms
import numpy as np
from mindspore import Tensor, ops
from mindspore.nn.learning_rate_schedule import LearningRateSchedule

from src.config import Config


def warmup_cosine_lr(lr_init: float, lr_max: float, lr_end: float, warmup_epochs: float,
                     total_epochs: int, steps_per_epoch: int) -> np.ndarray:
    """The whole schedule as a float32 array of T values."""
    total = int(total_epochs * steps_per_epoch)
    warmup = int(warmup_epochs * steps_per_epoch)
    if total <= 0:
        raise ValueError(f"the schedule needs at least one step (epochs {total_epochs}, "
                         f"steps per epoch {steps_per_epoch})")
    step = np.arange(total, dtype=np.float64)
    warming = lr_init + (lr_max - lr_init) * step / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    decaying = lr_end + (lr_max - lr_end) * (1 + np.cos(np.pi * progress)) / 2
    lrs = np.where(step < warmup, warming, decaying)
    return np.maximum(lrs, 0).astype(np.float32)


REFERENCE_LR = 0.075
REFERENCE_GLOBAL_BATCH = 256


def peak_lr(config: Config, world_size: int = 1) -> float:
    """``--lr`` if given, else the reference's 0.075 for 8 x 32 images scaled linearly to this
    run's global batch (``batch_size`` x devices)."""
    if config.lr > 0:
        return float(config.lr)
    return REFERENCE_LR * config.batch_size * world_size / REFERENCE_GLOBAL_BATCH


def lr_from_config(config: Config, steps_per_epoch: int, world_size: int = 1) -> np.ndarray:
    top = peak_lr(config, world_size)
    return warmup_cosine_lr(config.lr_init, top, top * config.lr_end_rate, config.warmup_epochs,
                            config.epoch_size, steps_per_epoch)


class TableSchedule(LearningRateSchedule):
    """Optimizer learning rate from a precomputed table, clamped at its last entry."""

    def __init__(self, table):
        super().__init__()
        self.table = Tensor(np.asarray(table, np.float32))
        self.last = len(table) - 1

    def construct(self, global_step):
        index = ops.minimum(ops.reshape(ops.cast(global_step, ms.int32), ()), self.last)
        return ops.gather(self.table, index, 0)
