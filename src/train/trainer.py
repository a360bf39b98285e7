"""The training run behind train.py: a ``Trainer`` owns the network, train step, schedule,
position, counters, best mAP and log, and runs the epochs; ``train(config)`` prepares the data
and hands over. Logs (``run_log``), stop requests (``signals``), checkpoints and resume
(``checkpoint``), pretrained weights (``pretrained``) and evaluation (``evaluation``) live in
their own modules."""
import itertools
import math
import os
import time
from typing import Iterator, Optional, Sequence

import numpy as np
from mindspore import Tensor

from src.box_coder import BoxCoder
from src.config import Config
from src.cpu import ONEDNN_ISA_VARIABLE, cpu_info
from src.data.pipeline import create_train_dataset
from src.data.records import DatasetError
from src.data.sources import check_split, prepare_split, with_data_classes
from src.device import Run, save_run_config, start_run
from src.infer.evaluation import Evaluation
from src.lr_schedule import lr_from_config, peak_lr
from src.model import build_ssd, conv_description, count_trainable_params, freeze_batch_norm
from src.model.metadata import metadata_entries
from src.progress import Progress, format_duration
from src.train.agreement import (
    check_ranks_agree,
    collective_failures_named,
    data_digest,
    weights_digest,
)
from src.train.checkpoint import (
    Position,
    checkpoint_name,
    find_resume_checkpoint,
    restore,
    save_checkpoint,
)
from src.train.hooks import EpochEnd, HookBase, default_hooks
from src.train.pretrained import load_pretrained
from src.train.run_folder import CURVE_NAME, claim_run_folder, hold_run_folder
from src.train.run_log import LOG_NAME, RunLog
from src.train.run_plan import RunPlan, create_run_plan
from src.train.signals import StopRequest
from src.train.step_feed import host_steps, sunk_steps
from src.train.train_step import create_train_step

DEFAULT_OUTPUT_DIR = os.path.join("outputs", "train")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stays non-finite); the message says why and where."""


def model_summary(config: Config, network, plan: RunPlan, images: int, steps_per_epoch: int,
                  output_dir: str, lr: Optional[float] = None, world: int = 1,
                  classes_given: bool = True) -> str:
    """The lines printed before training starts."""
    height, width = config.img_shape
    top = lr if lr is not None else peak_lr(config)
    platform = plan.platform
    return "\n".join([
        f"SSD-ResNet34: {count_trainable_params(network):,} trainable parameters, "
        f"{config.num_ssd_boxes:,} default boxes, input 3x{height}x{width}, "
        f"{config.class_count} classes (background included"
        f"{'' if classes_given else '; from the data'})",
        f"Device: {platform}, GRAPH_MODE, {plan.precision.describe()}, "
        f"convolutions: {conv_description(network)}, "
        f"{ONEDNN_ISA_VARIABLE}={os.environ.get(ONEDNN_ISA_VARIABLE, '(not set)')}",
        *([f"CPU: {cpu_info().describe()}"] if platform == "CPU" else []),
        f"Data: {images} images, batch {config.batch_size}"
        + (f" per device x {world} devices = global batch {config.batch_size * world}"
           if world > 1 else "")
        + f", {steps_per_epoch} steps/epoch, {config.epoch_size} epochs; "
        + plan.describe_feed(),
        f"Schedule: lr {config.lr_init:g} -> {top:g}{'' if config.lr else ' (scaled to the batch)'}"
        f" over {config.warmup_epochs:g} warm-up epochs, cosine to {top * config.lr_end_rate:g};"
        f" momentum {config.momentum:g}, weight decay {config.weight_decay:g}",
        f"Output: {os.path.abspath(output_dir)}"])


class Trainer:
    """One training run on a prepared training split (``src.data.sources.prepare_split``).

    Built from the config: the detector (its pretrained weights, frozen BatchNorm, precision),
    loss, optimizer, lr table and train step; the evaluation when ``eval_split`` is given (main
    process only); the position to start from (``--resume``, ``--pre_trained_epoch_size``).
    ``run()`` trains the remaining epochs and returns a summary dict.
    """

    def __init__(self, config: Config, run: Run, prepared, eval_split=None,
                 classes_given: bool = True, hooks: Optional[Sequence[HookBase]] = None):
        self.config, self.run_info, self.prepared = config, run, prepared
        self.output_dir, self.main = run.output_dir, run.is_main
        self.say = print if self.main else (lambda *args, **kwargs: None)
        per_rank_images = math.ceil(prepared.images / run.world)  # shards are padded equally
        self.steps_per_epoch = per_rank_images // config.batch_size
        if self.steps_per_epoch == 0:
            raise DatasetError(f"{per_rank_images} training images per device make no full "
                               f"batch of --batch_size {config.batch_size}")
        self.coder = BoxCoder.from_config(config)
        self.plan = create_run_plan(config, run.platform)
        self.network = build_ssd(config, self.plan.layers)
        if config.pre_trained:
            load_pretrained(config, self.network, self.say)
        if config.freeze_bn:
            self.say(f"--freeze_bn: {freeze_batch_norm(self.network)} BatchNorm layers use "
                     "running statistics")
        self.lr_table = lr_from_config(config, self.steps_per_epoch, run.world)
        self.train_step, _ = create_train_step(config, self.network, self.lr_table,
                                               run.platform, run.world, self.plan.uint8,
                                               precision=self.plan.precision)
        optimizer = self.train_step.optimizer
        # The network being trained, in float32: an int8 model is made from a checkpoint.
        self.evaluation = Evaluation(config.replace(quantize="none"), eval_split, fold_bn=False) \
            if eval_split and self.main else None
        self.position, self.resumed_from = self._start_position()
        optimizer.global_step.set_data(Tensor(np.array([self.position.global_step], np.int32)))
        self.say(model_summary(config, self.network, self.plan,
                               prepared.images, self.steps_per_epoch,
                               self.output_dir, float(self.lr_table.max()), run.world,
                               classes_given), flush=True)
        if run.world > 1:   # before anything is written or trained
            check_ranks_agree({"steps_per_epoch": self.steps_per_epoch,
                               "global_step": self.position.global_step,
                               "resumed": int(bool(self.resumed_from)),
                               "images": prepared.images, "data": data_digest(prepared),
                               "weights": weights_digest(self.train_step)},
                              run.rank, run.world)
        self.log = RunLog(os.path.join(self.output_dir, LOG_NAME),
                          keep_until_step=self.position.global_step if self.resumed_from
                          else None, enabled=self.main)
        self.best_map = max((r["mAP"] for r in self.log.rows() if r.get("kind") == "eval"),
                            default=-1.0) if self.main else -1.0
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.checkpoint: Optional[str] = None
        self.epoch_losses: list = []
        self.hooks: list = []
        self.register_hooks(default_hooks(config, self.main, self.evaluation, self.output_dir)
                            if hooks is None else hooks)

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Add ``hooks`` (run after those already registered); each gets this trainer."""
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def _start_position(self):
        """(Position to continue from, the checkpoint resumed or None)."""
        config, steps = self.config, self.steps_per_epoch
        start = config.pre_trained_epoch_size
        position = Position(start, steps, start * steps)
        path = find_resume_checkpoint(config.resume, self.output_dir) if config.resume else None
        if path:
            position = restore(self.train_step, path, steps, config)
            self.say(f"Resuming from {path}: epoch {position.epoch}, step "
                     f"{position.step_in_epoch}/{steps}, global step {position.global_step}",
                     flush=True)
        elif config.resume:
            self.say(f"--resume auto: no checkpoint in {self.output_dir} yet, starting fresh",
                     flush=True)
        if position.next_start(steps)[0] > config.epoch_size:
            raise ValueError(f"nothing left to train: epoch {position.epoch} is done and "
                             f"--epoch_size is {config.epoch_size}")
        return position, path

    def run_data(self, first_epoch: int, first_batch: int):
        """The batches of epochs ``first_epoch`` .. epoch_size in one pipeline, from batch
        ``first_batch`` of the first (each epoch the same for a given seed)."""
        config = self.config
        return create_train_dataset(self.prepared.files, self.coder, config.batch_size,
                                    config.img_shape, num_shards=self.run_info.world,
                                    shard_id=self.run_info.rank,
                                    num_workers=config.workers, seed=config.seed,
                                    epoch=first_epoch, crop_rule=config.crop_rule,
                                    processes=self.plan.processes, uint8=self.plan.uint8,
                                    epochs=config.epoch_size - first_epoch + 1, skip=first_batch)

    def save(self, name: str) -> str:
        """A training checkpoint of the current position (main process only)."""
        path = os.path.join(self.output_dir, name)
        if not self.main:
            return path
        position = self.position
        return save_checkpoint(self.train_step, path, metadata_entries(
            self.config, epoch=position.epoch, step_in_epoch=position.step_in_epoch,
            global_step=position.global_step, seed=self.config.seed,
            steps_per_epoch=self.steps_per_epoch,
            class_names=self.prepared.source.class_names))

    def record(self, outputs: Sequence[tuple], epoch: int, bar: Progress, seconds: float,
               losses: list) -> int:
        """Read the outputs of the steps run since the last read (``seconds`` shared equally
        among them): log each, append its loss to ``losses`` when finite, count the non-finite
        ones in a row and stop the run at ``max_nonfinite_steps``. Returns the steps skipped."""
        position, config = self.position, self.config
        images_per_step = config.batch_size * self.run_info.world
        per_step = seconds / len(outputs)
        skipped, too_many = 0, None
        for loss, cls_loss, loc_loss, finite, scale, img_id in outputs:
            lr = float(self.lr_table[min(position.global_step, len(self.lr_table) - 1)])
            loss, cls_loss, loc_loss = (float(v.asnumpy()) for v in (loss, cls_loss, loc_loss))
            finite = bool(finite.asnumpy())
            position.global_step += 1
            position.step_in_epoch += 1
            row = {"epoch": epoch, "global_step": position.global_step, "loss": loss,
                   "cls_loss": cls_loss, "loc_loss": loc_loss, "lr": lr, "finite": finite,
                   "loss_scale": float(scale.asnumpy()), "step_seconds": round(per_step, 4),
                   "img_per_s": round(images_per_step / per_step, 3)}
            self.log.write("step", **row)
            for hook in self.hooks:
                hook.after_step(row)
            bar.update(1, loss=loss, cls=cls_loss, loc=loc_loss, lr=lr,
                       **{"img/s": images_per_step / per_step})
            if finite:
                self.nonfinite_in_a_row = 0
                losses.append(loss)
                continue
            skipped += 1
            self.nonfinite_in_a_row += 1
            ids = img_id.asnumpy().ravel().tolist()
            self.say(f"\nstep {position.global_step}: non-finite loss or gradient (loss "
                     f"{loss}); update skipped; images {ids}", flush=True)
            if self.nonfinite_in_a_row >= config.max_nonfinite_steps and too_many is None:
                too_many = TrainingError(
                    f"{self.nonfinite_in_a_row} non-finite steps in a row, the last at step "
                    f"{position.global_step} (epoch {epoch}) on images {ids}; stopping. The "
                    "last good checkpoint is kept: lower --lr, or look at those images")
        if too_many is not None:   # raised once every step that ran is logged
            raise too_many
        return skipped

    def run_steps(self, first_epoch: int, first_batch: int):
        """The unread outputs of every remaining step of the run, from batch ``first_batch`` of
        epoch ``first_epoch``: one pipeline (and one data sink) for the whole run, released
        when the generator is closed."""
        data, files = self.run_data(first_epoch, first_batch), self.prepared.files
        if self.plan.loop.sink:
            total = (self.config.epoch_size - first_epoch + 1) * self.steps_per_epoch
            return sunk_steps(self.train_step, data, files, total - first_batch)
        return host_steps(self.train_step, data, files)

    def run_epoch(self, epoch: int, first_batch: int, stop: StopRequest,
                  run_steps: Iterator[tuple]) -> tuple:
        """Train epoch ``epoch`` from batch ``first_batch`` with its steps taken from
        ``run_steps``, reading them back every ``loop.read_every`` steps and at the epoch's
        end; returns (losses of its finite steps, steps skipped, whether a stop was
        requested)."""
        self.position.epoch, self.position.step_in_epoch = epoch, first_batch
        progress = self.config.progress if self.main else "off"
        bar = Progress(self.steps_per_epoch - first_batch,
                       f"epoch {epoch}/{self.config.epoch_size}", progress)
        losses: list = []
        pending: list = []
        skipped, tick = 0, time.time()
        try:
            for outputs in itertools.islice(run_steps, self.steps_per_epoch - first_batch):
                pending.append(outputs)
                last = self.position.step_in_epoch + len(pending) >= self.steps_per_epoch
                if len(pending) < self.plan.loop.read_every and not last:
                    continue
                skipped += self.record(pending, epoch, bar, time.time() - tick, losses)
                pending, tick = [], time.time()
                if stop.agreed():
                    return losses, skipped, True
            if pending:
                skipped += self.record(pending, epoch, bar, time.time() - tick, losses)
        finally:
            bar.close()
        return losses, skipped, False

    def end_of_epoch(self, epoch: int, losses: list, skipped: int, seconds: float) -> None:
        """Every hook's job after a complete epoch (``src.train.hooks``), in order."""
        end = EpochEnd(epoch, losses, skipped, seconds)
        for hook in self.hooks:
            hook.after_epoch(end)

    def run(self) -> dict:
        """Train the remaining epochs; returns a summary dict (paths, losses, time), or the
        checkpoint written when a stop was requested."""
        config, output_dir = self.config, self.output_dir
        first_epoch, first_batch = self.position.next_start(self.steps_per_epoch)
        run_start = time.time()
        steps = self.run_steps(first_epoch, first_batch)
        try:
            with StopRequest(self.run_info.world) as stop:
                for epoch in range(first_epoch, config.epoch_size + 1):
                    skip = first_batch if epoch == first_epoch else 0
                    epoch_start = time.time()
                    losses, skipped, stopped = self.run_epoch(epoch, skip, stop, steps)
                    self.skipped_steps += skipped
                    if stopped:
                        self.checkpoint = self.save(checkpoint_name(
                            epoch, self.position.step_in_epoch))
                        self.say(f"Stopped by {stop.requested} at epoch {epoch}, step "
                                 f"{self.position.step_in_epoch}/{self.steps_per_epoch}. Saved "
                                 f"{self.checkpoint}.\nResume with the same command plus "
                                 "--resume auto", flush=True)
                        return {"checkpoint": self.checkpoint, "stopped": stop.requested,
                                "output_dir": output_dir}
                    self.end_of_epoch(epoch, losses, skipped, time.time() - epoch_start)
        finally:
            steps.close()   # the run's pipeline (and device queue) released, also on a stop
            for hook in self.hooks:
                hook.after_train()
            self.log.close()
        total = time.time() - run_start
        losses = self.epoch_losses
        trend = (f"loss {losses[0]:.4f} (first epoch mean) -> {losses[-1]:.4f} (last)"
                 if losses else "")
        curve = os.path.join(output_dir, CURVE_NAME)
        self.say(f"Training done in {format_duration(total)}: {trend}; checkpoint "
                 f"{self.checkpoint}; curves {curve}; log {self.log.path}", flush=True)
        return {"checkpoint": self.checkpoint, "epoch_losses": losses, "seconds": total,
                "log": self.log.path, "curve": curve, "skipped_steps": self.skipped_steps,
                "output_dir": output_dir, "best_map": self.best_map}


def train(config: Config) -> dict:
    """train.py: check or convert the data, or train as configured; returns a summary dict."""
    run = start_run(config, DEFAULT_OUTPUT_DIR, distribute=config.distribute, save=False)
    if not (config.check_dataset or config.only_create_dataset):
        aside = claim_run_folder(run.output_dir, config.resume, config.overwrite,
                                 move=run.is_main)
        if aside:
            print(f"--overwrite: the earlier run's files are in {aside}", flush=True)
    elif run.is_main:   # it writes config.yaml there: not into a folder a training holds
        hold_run_folder(run.output_dir)
    save_run_config(config, run)
    if config.device_num and config.device_num != run.world:
        raise ValueError(f"--device_num {config.device_num} but MindSpore reports {run.world} "
                         "processes in this job; leave --device_num out")
    say = print if run.is_main else (lambda *args, **kwargs: None)
    if config.check_dataset:
        return check_split(config, "train")
    prepared = prepare_split(config, "train", run.output_dir, progress=run.is_main, log=say)
    classes_given = bool(config.num_classes)
    config = with_data_classes(config, prepared.source, say)
    save_run_config(config, run)
    if config.only_create_dataset:
        say(f"MindRecord set ready: {os.path.dirname(prepared.files[0])}")
        return {"mindrecord_files": prepared.files}
    eval_split = prepare_split(config, "eval", run.output_dir, progress=run.is_main,
                               log=say) if config.eval_interval else None
    with collective_failures_named(run.rank, run.world, run.platform, os.environ):
        return Trainer(config, run, prepared, eval_split, classes_given).run()
