"""The jobs of a training run at its boundaries, in the manner of detectron2's ``HookBase``.

The ``Trainer`` runs the steps; after each step it hands the step's log row to every hook,
after each complete epoch an ``EpochEnd``, and at the run's end calls ``after_train``. A hook
reaches the trainer's parts through ``self.trainer`` (set when the trainer takes it). The
default jobs, in their order (``default_hooks``): the epoch's log row and line, the periodic
checkpoint, evaluation with best.ckpt, the loss curves, TensorBoard's event files. A new job
(an EMA, early stopping, another metrics writer) is a new hook, not an edit of the Trainer.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from src.config import Config
from src.device import current_rss_mb
from src.model.weights import copy_weights
from src.progress import format_duration
from src.train.checkpoint import checkpoint_name, prune_checkpoints
from src.train.run_folder import BEST_NAME, CURVE_NAME, EVAL_FOLDER
from src.visualize import plot_training_curves

TENSORBOARD_FOLDER = "tensorboard"
TENSORBOARD_IMAGES = 4   # validation images drawn with their detections at each evaluation


@dataclass
class EpochEnd:
    """A complete epoch: its number, the losses of its finite steps, the steps skipped, its
    time; ``evaluation`` is the evaluation's results (``score_and_report``) and ``detections``
    its DetectionStore when the evaluation hook ran this epoch."""
    epoch: int
    losses: list
    skipped: int
    seconds: float
    evaluation: Optional[dict] = None
    detections: object = None
    extra: dict = field(default_factory=dict)

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")


class HookBase:
    """A job of the training run; every method may be left as it is (nothing)."""

    trainer: Any = None   # the Trainer, set when it takes the hook

    def after_step(self, row: dict) -> None:
        """``row``: the step's log row (global_step, loss and its parts, lr, loss scale,
        img/s...)."""

    def after_epoch(self, end: EpochEnd) -> None:
        """After a complete epoch (not after a stop in its middle)."""

    def after_train(self) -> None:
        """When the run ends, also on a stop or an error."""


class EpochReport(HookBase):
    """The log's 'epoch' row and the epoch's printed line."""

    def after_epoch(self, end: EpochEnd) -> None:
        trainer = self.trainer
        config = trainer.config
        trainer.epoch_losses.append(end.mean_loss)
        trainer.log.write("epoch", epoch=end.epoch, global_step=trainer.position.global_step,
                          mean_loss=end.mean_loss, seconds=round(end.seconds, 2),
                          skipped_steps=end.skipped, rss_mb=round(current_rss_mb(), 1))
        images = (len(end.losses) + end.skipped) * config.batch_size * trainer.run_info.world
        trainer.say(f"epoch {end.epoch}/{config.epoch_size}: mean loss {end.mean_loss:.4f}, "
                    f"{end.seconds:.1f} s ({images / end.seconds:.2f} img/s)"
                    f"{f', {end.skipped} non-finite steps skipped' if end.skipped else ''}, "
                    f"about {format_duration((config.epoch_size - end.epoch) * end.seconds)} "
                    "left", flush=True)


class PeriodicCheckpoint(HookBase):
    """A checkpoint every ``save_checkpoint_epochs`` epochs and after the last; the newest
    ``keep_checkpoint_max`` kept."""

    def after_epoch(self, end: EpochEnd) -> None:
        trainer = self.trainer
        config = trainer.config
        if end.epoch % config.save_checkpoint_epochs and end.epoch != config.epoch_size:
            return
        trainer.checkpoint = trainer.save(checkpoint_name(end.epoch, trainer.steps_per_epoch))
        if trainer.main:
            prune_checkpoints(trainer.output_dir, config.keep_checkpoint_max)
        trainer.say(f"Saved checkpoint {trainer.checkpoint}", flush=True)


class EvaluationHook(HookBase):
    """Every ``eval_interval`` epochs from ``eval_start_epoch`` (and after the last): the
    network's weights into the evaluation's copy, eval.py's scoring and report (into
    <output_dir>/eval), the log's 'eval' row, best.ckpt on a new best mAP."""

    def __init__(self, evaluation):
        self.evaluation = evaluation

    def wanted(self, epoch: int) -> bool:
        config = self.trainer.config
        return epoch >= config.eval_start_epoch and (
            epoch % config.eval_interval == 0 or epoch == config.epoch_size)

    def after_epoch(self, end: EpochEnd) -> None:
        if not self.wanted(end.epoch):
            return
        trainer, evaluation = self.trainer, self.evaluation
        copy_weights(trainer.network, evaluation.net)
        print(f"eval epoch {end.epoch}: scoring {evaluation.images} images of "
              f"{evaluation.prepared.source.name}", flush=True)
        end.detections = evaluation.infer(desc=f"eval epoch {end.epoch}")
        results = evaluation.score(end.detections, os.path.join(trainer.output_dir, EVAL_FOLDER),
                                   {"epoch": end.epoch})
        end.evaluation = results
        trainer.log.write("eval", epoch=end.epoch, global_step=trainer.position.global_step,
                          mAP=results["mAP"], AP50=results["AP50"], AP75=results["AP75"])
        note = ""
        if results["mAP"] > trainer.best_map:
            trainer.best_map = results["mAP"]
            note = f"; new best, saved {trainer.save(BEST_NAME)}"
        print(f"eval epoch {end.epoch}: mAP {results['mAP']:.4f}, AP50 "
              f"{results['AP50']:.4f}{note}", flush=True)


class CurvesHook(HookBase):
    """loss_curve.png redrawn from the log after every epoch."""

    def after_epoch(self, end: EpochEnd) -> None:
        trainer = self.trainer
        plot_training_curves(trainer.log.rows(), os.path.join(trainer.output_dir, CURVE_NAME))


class TensorBoardHook(HookBase):
    """TensorBoard event files in <output_dir>/tensorboard (``tensorboardX``'s writer): each
    step's loss and its parts, learning rate, images a second and loss scale; each epoch's mean
    loss; each evaluation's mAP, AP50 and AP75, and the first ``TENSORBOARD_IMAGES``
    validation images with their detections scoring at least ``draw_threshold``. Steps are the
    global step; a resumed run appends to the same folder."""

    SCALARS = {"loss": "loss/total", "cls_loss": "loss/class", "loc_loss": "loss/box",
               "lr": "train/lr", "img_per_s": "train/img_per_s",
               "loss_scale": "train/loss_scale"}

    def __init__(self, folder: str, draw_threshold: float = 0.3):
        self.folder, self.draw_threshold = folder, draw_threshold
        self._writer = None

    def writer(self, step: int):
        """The event writer, opened at the run's first step ``step``. A resumed run's writer
        hides the events of the interrupted run from that step on (``purge_step``): the steps
        after its checkpoint are trained again."""
        if self._writer is None:
            from tensorboardX import SummaryWriter

            resumed = bool(getattr(self.trainer, "resumed_from", None))
            self._writer = SummaryWriter(self.folder, purge_step=step if resumed else None)
        return self._writer

    def after_step(self, row: dict) -> None:
        step = row["global_step"]
        writer = self.writer(step)
        for key, tag in self.SCALARS.items():
            if key in row:
                writer.add_scalar(tag, row[key], step)

    def after_epoch(self, end: EpochEnd) -> None:
        step = self.trainer.position.global_step
        writer = self.writer(step)
        writer.add_scalar("epoch/mean_loss", end.mean_loss, step)
        if end.evaluation is not None:
            for key in ("mAP", "AP50", "AP75"):
                writer.add_scalar(f"eval/{key}", end.evaluation[key], step)
            for index, picture in enumerate(self.pictures(end.detections)):
                writer.add_image(f"eval/image_{index}", picture, step, dataformats="HWC")
        writer.flush()

    def pictures(self, detections) -> list:
        """RGB arrays of the first validation images with their detections drawn."""
        import cv2

        from src.visualize import draw_detections

        source = self.trainer.evaluation.prepared.source
        threshold = self.draw_threshold
        pictures = []
        for record in source.records[:TENSORBOARD_IMAGES]:
            image = cv2.imread(record.path)
            if image is None:
                continue
            xywh, scores, classes = detections.image(record.img_id)
            shown = scores >= threshold
            x, y, w, h = xywh[shown].T
            drawn = draw_detections(image, np.stack([y, x, y + h, x + w], 1), scores[shown],
                                    classes[shown], source.class_names)
            pictures.append(cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB))
        return pictures

    def after_train(self) -> None:
        if self._writer is not None:
            self._writer.close()


def default_hooks(config: Config, main: bool, evaluation=None,
                  output_dir: str = ".") -> Sequence[HookBase]:
    """The run's jobs: on every process the epoch report and the checkpoint (which writes on
    the main process only); on the main process the evaluation (when ``evaluation`` is given),
    the curves and, with ``tensorboard`` on, the event files."""
    hooks = [EpochReport(), PeriodicCheckpoint()]
    if main:
        if evaluation is not None:
            hooks.append(EvaluationHook(evaluation))
        hooks.append(CurvesHook())
        if config.tensorboard:
            hooks.append(TensorBoardHook(os.path.join(output_dir, TENSORBOARD_FOLDER)))
    return hooks
