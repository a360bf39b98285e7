"""The training run behind train.py: data, model, schedule, train step, logs, plots, checkpoints."""
import json
import os
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor

from src.anchors import default_boxes_from_config
from src.box_coder import BoxCoder
from src.data.pipeline import create_train_dataset
from src.data.records import DatasetError
from src.data.sources import check_split, prepare_split
from src.device import ONEDNN_ISA_VARIABLE, start_run
from src.engine.checkpoint import (checkpoint_name, load_weights, prune_checkpoints,
                                   save_checkpoint)
from src.engine.progress import Progress, format_duration
from src.engine.train_step import TrainStep, create_optimizer
from src.loss import SSDWithLossCell
from src.lr_schedule import lr_from_config
from src.model import build_ssd, count_trainable_params
from src.visualize import plot_training_curves

DEFAULT_OUTPUT_DIR = os.path.join("outputs", "train")
LOG_NAME = "train_log.jsonl"
CURVE_NAME = "loss_curve.png"


def resolve_precision(config, platform):
    """fp16 on GPU unless told otherwise (as the reference), fp32 elsewhere."""
    if config.precision != "auto":
        return config.precision
    return "fp16" if platform == "GPU" else "fp32"


def resolve_loss_scale(config, platform, precision):
    """The reference trains fp32 on CPU with scale 1; elsewhere it uses --loss_scale."""
    return 1.0 if platform == "CPU" and precision == "fp32" else float(config.loss_scale)


class MetricsLog:
    """JSON-lines log: one object per step ('kind': 'step') and per epoch ('kind': 'epoch')."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "w", encoding="utf-8")

    def write(self, kind, **fields):
        self.file.write(json.dumps({"kind": kind, **fields}) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def model_summary(config, network, platform, precision, loss_scale, images, steps_per_epoch,
                  output_dir):
    """The lines printed before training starts."""
    boxes = config.num_ssd_boxes
    height, width = config.img_shape
    return "\n".join([
        f"SSD-ResNet34: {count_trainable_params(network):,} trainable parameters, "
        f"{boxes:,} default boxes, input 3x{height}x{width}, {config.num_classes} classes "
        "(background included)",
        f"Device: {platform}, GRAPH_MODE, {precision}, loss scale {loss_scale:g} "
        f"({config.loss_scale_mode}), {ONEDNN_ISA_VARIABLE}={os.environ.get(ONEDNN_ISA_VARIABLE)}",
        f"Data: {images} images, batch {config.batch_size}, {steps_per_epoch} steps/epoch, "
        f"epochs {config.pre_trained_epoch_size + 1}..{config.epoch_size}",
        f"Schedule: lr {config.lr_init:g} -> {config.lr:g} over {config.warmup_epochs:g} warm-up "
        f"epochs, cosine to {config.lr * config.lr_end_rate:g}; momentum {config.momentum:g}, "
        f"weight decay {config.weight_decay:g}",
        f"Output: {os.path.abspath(output_dir)}"])


def train(config):
    """Train as configured; returns a summary dict (paths, losses, time)."""
    output_dir, platform = start_run(config, DEFAULT_OUTPUT_DIR)
    if config.check_dataset:
        return check_split(config, "train")
    prepared = prepare_split(config, "train", output_dir)
    files = prepared.files
    if config.only_create_dataset:
        print(f"MindRecord set ready: {os.path.dirname(files[0])}")
        return {"mindrecord_files": files}

    coder = BoxCoder(default_boxes_from_config(config), config.match_threshold,
                     config.prior_scaling)
    dataset = create_train_dataset(files, coder, config.batch_size, config.img_shape,
                                   num_workers=config.num_parallel_workers, seed=config.seed)
    steps_per_epoch = dataset.get_dataset_size()
    if steps_per_epoch == 0:
        raise DatasetError(f"{prepared.images} training images make no full batch of "
                           f"--batch_size {config.batch_size}")
    start_epoch = config.pre_trained_epoch_size
    if start_epoch >= config.epoch_size:
        raise ValueError(f"--pre_trained_epoch_size {start_epoch} leaves nothing to train with "
                         f"--epoch_size {config.epoch_size}")

    network = build_ssd(config)
    if config.pre_trained:
        loaded, left = load_weights(network, config.pre_trained, drop_heads=config.filter_weight)
        print(f"Loaded {loaded} tensors from {config.pre_trained}; {len(left)} keep their "
              f"initial values{' (heads dropped by --filter_weight)' if config.filter_weight else ''}")
    precision = resolve_precision(config, platform)
    if precision == "fp16":
        network.to_float(ms.float16)
    loss_scale = resolve_loss_scale(config, platform, precision)
    lr_table = lr_from_config(config, steps_per_epoch)
    optimizer = create_optimizer(network, lr_table, config.momentum, config.weight_decay)
    first_step = start_epoch * steps_per_epoch
    optimizer.global_step.set_data(Tensor(np.array([first_step], np.int32)))
    train_step = TrainStep(SSDWithLossCell(network, config.gamma, config.alpha), optimizer,
                           loss_scale, dynamic=config.loss_scale_mode == "dynamic")
    train_step.set_train(True)
    print(model_summary(config, network, platform, precision, loss_scale, prepared.images,
                        steps_per_epoch, output_dir), flush=True)

    log = MetricsLog(os.path.join(output_dir, LOG_NAME))
    curve_path = os.path.join(output_dir, CURVE_NAME)
    iterator = dataset.create_tuple_iterator(num_epochs=config.epoch_size - start_epoch)
    global_step, run_start, epoch_losses, checkpoint = first_step, time.time(), [], None
    skipped_total = 0
    try:
        for epoch in range(start_epoch + 1, config.epoch_size + 1):
            bar = Progress(steps_per_epoch, f"epoch {epoch}/{config.epoch_size}",
                           config.progress)
            losses, skipped, epoch_start = [], 0, time.time()
            tick = epoch_start
            for image, box, label, num_match, _img_id in iterator:
                lr = float(lr_table[min(global_step, len(lr_table) - 1)])
                loss, cls_loss, loc_loss, finite, scale = train_step(image, box, label, num_match)
                loss, cls_loss, loc_loss = (float(v.asnumpy()) for v in (loss, cls_loss, loc_loss))
                finite = bool(finite.asnumpy())
                now = time.time()
                step_seconds, tick = now - tick, now
                global_step += 1
                skipped += not finite
                losses.append(loss)
                log.write("step", epoch=epoch, global_step=global_step, loss=loss,
                          cls_loss=cls_loss, loc_loss=loc_loss, lr=lr, finite=finite,
                          loss_scale=float(scale.asnumpy()), step_seconds=round(step_seconds, 4),
                          img_per_s=round(config.batch_size / step_seconds, 3))
                bar.update(loss=loss, cls=cls_loss, loc=loc_loss, lr=lr,
                           **{"img/s": config.batch_size / step_seconds})
            bar.close()
            seconds = time.time() - epoch_start
            mean_loss = float(np.mean(losses))
            epoch_losses.append(mean_loss)
            skipped_total += skipped
            log.write("epoch", epoch=epoch, global_step=global_step, mean_loss=mean_loss,
                      seconds=round(seconds, 2), skipped_steps=skipped)
            remaining = (config.epoch_size - epoch) * seconds
            print(f"epoch {epoch}/{config.epoch_size}: mean loss {mean_loss:.4f}, "
                  f"{seconds:.1f} s ({steps_per_epoch * config.batch_size / seconds:.2f} img/s)"
                  f"{f', {skipped} non-finite steps skipped' if skipped else ''}, "
                  f"about {format_duration(remaining)} left", flush=True)
            if epoch % config.save_checkpoint_epochs == 0 or epoch == config.epoch_size:
                checkpoint = save_checkpoint(
                    train_step, os.path.join(output_dir, checkpoint_name(epoch, steps_per_epoch)),
                    {"epoch": epoch, "global_step": global_step, "seed": config.seed,
                     "steps_per_epoch": steps_per_epoch})
                prune_checkpoints(output_dir, config.keep_checkpoint_max)
                print(f"Saved checkpoint {checkpoint}", flush=True)
            plot_training_curves(log.path, curve_path)
    finally:
        log.close()
    total = time.time() - run_start
    print(f"Training done in {format_duration(total)}: loss {epoch_losses[0]:.4f} (first epoch "
          f"mean) -> {epoch_losses[-1]:.4f} (last); checkpoint {checkpoint}; curves {curve_path}; "
          f"log {log.path}", flush=True)
    return {"checkpoint": checkpoint, "epoch_losses": epoch_losses, "seconds": total,
            "log": log.path, "curve": curve_path, "skipped_steps": skipped_total,
            "output_dir": output_dir}
