"""The training run behind train.py: data, model, schedule, train step, logs, plots,
checkpoints, resume, evaluation during training, and stopping cleanly on signals or NaNs."""
import json
import math
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor

from src.anchors import default_boxes_from_config
from src.box_coder import BoxCoder
from src.data.pipeline import create_train_dataset
from src.data.records import DatasetError
from src.data.sources import check_split, prepare_split, with_data_classes
from src.cpu import ONEDNN_ISA_VARIABLE, cpu_info
from src.device import save_run_config, start_run
from src.engine.checkpoint import (CheckpointError, checkpoint_name, is_backbone_checkpoint,
                                   list_checkpoints, load_backbone, load_weights,
                                   prune_checkpoints, read_checkpoint, read_state,
                                   save_checkpoint, state_entries)
from src.engine.progress import Progress, format_duration
from src.engine.train_step import TrainStep, create_optimizer
from src.loss import SSDWithLossCell
from src.lr_schedule import lr_from_config, peak_lr
from src.model import build_ssd, conv_description, count_trainable_params, freeze_batch_norm
from src.visualize import plot_training_curves, read_jsonl

DEFAULT_OUTPUT_DIR = os.path.join("outputs", "train")
LOG_NAME = "train_log.jsonl"
CURVE_NAME = "loss_curve.png"
BEST_NAME = "best.ckpt"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stays non-finite); the message says why and where."""


@dataclass
class Position:
    """Where training stands: ``step_in_epoch`` steps of ``epoch`` are done (1-based epochs;
    a finished epoch has step_in_epoch == steps_per_epoch)."""

    epoch: int
    step_in_epoch: int
    global_step: int

    def next_start(self, steps_per_epoch):
        """(epoch to run next, batches of it already done)."""
        if self.step_in_epoch >= steps_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.step_in_epoch


def resolve_precision(config, platform):
    """fp16 on GPU unless told otherwise (as the reference), fp32 elsewhere."""
    if config.precision != "auto":
        return config.precision
    return "fp16" if platform == "GPU" else "fp32"


def resolve_loss_scale(config, platform, precision):
    """The reference trains fp32 on CPU with scale 1; elsewhere it uses --loss_scale."""
    return 1.0 if platform == "CPU" and precision == "fp32" else float(config.loss_scale)


class MetricsLog:
    """JSON-lines log: one object per step ('kind': 'step'), epoch ('epoch') and eval ('eval').

    A resumed run keeps the rows up to its checkpoint's step and appends after them. A disabled
    log (the other ranks of a distributed run) writes nothing.
    """

    def __init__(self, path, keep_until_step=None, enabled=True):
        self.path = path
        self.file = None
        if not enabled:
            return
        rows = []
        if keep_until_step is not None:
            rows = [r for r in read_jsonl(path) if r.get("global_step", 0) <= keep_until_step]
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, kind, **fields):
        if self.file:
            self.file.write(json.dumps({"kind": kind, **fields}) + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads at the next step boundary; a second
    Ctrl-C stops at once. In a distributed run the ranks agree (an all-reduce of the flag after
    every step), so all of them stop after the same step."""

    def __init__(self, world=1):
        self.requested = None
        self.previous = {}
        self.world = world
        self.any_rank = None
        if world > 1:
            from mindspore import ops

            self.any_rank = ops.AllReduce()   # a sum: CPU collectives only add

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, _frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: saving a checkpoint after this step "
              "(Ctrl-C again to stop at once)", flush=True)

    def agreed(self):
        """Whether this step is the last one (on every rank)."""
        if self.any_rank is None:
            return bool(self.requested)
        flag = Tensor(np.array([1.0 if self.requested else 0.0], np.float32))
        stop = float(self.any_rank(flag).asnumpy()[0]) > 0
        if stop and not self.requested:
            self.requested = "another rank's stop request"
        return stop

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def model_summary(config, network, platform, precision, loss_scale, images, steps_per_epoch,
                  output_dir, lr=None, world=1, classes_given=True):
    """The lines printed before training starts."""
    height, width = config.img_shape
    top = lr if lr is not None else peak_lr(config)
    return "\n".join([
        f"SSD-ResNet34: {count_trainable_params(network):,} trainable parameters, "
        f"{config.num_ssd_boxes:,} default boxes, input 3x{height}x{width}, "
        f"{config.class_count} classes (background included"
        f"{'' if classes_given else '; from the data'})",
        f"Device: {platform}, GRAPH_MODE, {precision}, loss scale {loss_scale:g} "
        f"({config.loss_scale_mode}), convolutions: {conv_description(network)}, "
        f"{ONEDNN_ISA_VARIABLE}={os.environ.get(ONEDNN_ISA_VARIABLE, '(not set)')}",
        *([f"CPU: {cpu_info().describe()}"] if platform == "CPU" else []),
        f"Data: {images} images, batch {config.batch_size}"
        + (f" per device x {world} devices = global batch {config.batch_size * world}"
           if world > 1 else "")
        + f", {steps_per_epoch} steps/epoch, {config.epoch_size} epochs",
        f"Schedule: lr {config.lr_init:g} -> {top:g}{'' if config.lr else ' (scaled to the batch)'}"
        f" over {config.warmup_epochs:g} warm-up epochs, cosine to {top * config.lr_end_rate:g};"
        f" momentum {config.momentum:g}, weight decay {config.weight_decay:g}",
        f"Output: {os.path.abspath(output_dir)}"])


def load_pretrained(config, network, say=print):
    """--pre_trained: a detector checkpoint (heads dropped with --filter_weight) or an
    ImageNet-style ResNet-34 backbone checkpoint; prints what was loaded and skipped."""
    path = config.pre_trained
    params = read_checkpoint(path)
    if is_backbone_checkpoint(params):
        loaded, skipped = load_backbone(network, path, params)
        say(f"Backbone checkpoint {path}: loaded {len(loaded)} tensors into the ResNet-34 "
              f"backbone; skipped {len(skipped)}:")
        for name, why in sorted(skipped.items()):
            say(f"  {name}: {why}")
        return
    loaded, left = load_weights(network, path, config.filter_weight, params)
    reason = " (heads dropped by --filter_weight)" if config.filter_weight else ""
    say(f"Loaded {loaded} tensors from {path}; {len(left)} keep their initial values{reason}")


def find_resume_checkpoint(resume, output_dir):
    """The checkpoint --resume names: 'auto' = newest complete one in the run folder (None if
    there is none yet), else the given path."""
    if resume != "auto":
        if not os.path.isfile(resume):
            raise CheckpointError(f"--resume {resume}: no such checkpoint")
        return resume
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def restore(train_step, path, steps_per_epoch):
    """Load a training checkpoint into the train step; returns its Position."""
    params = read_checkpoint(path)
    state = read_state(params, path)
    if state.get("steps_per_epoch") not in (None, steps_per_epoch):
        raise CheckpointError(f"{path} was written with {state['steps_per_epoch']} steps per "
                              f"epoch, this run has {steps_per_epoch}: same data and batch size "
                              "are needed to resume")
    missing, _ = ms.load_param_into_net(train_step, params, strict_load=True)
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} tensors of this model and optimizer "
                              f"(e.g. {missing[0]}): it is not a training checkpoint of this "
                              "configuration")
    return Position(state["epoch"], state["step_in_epoch"], state["global_step"])


class EvalDuringTraining:
    """Evaluates a copy of the network on the eval split with eval.py's post-processing."""

    def __init__(self, config, prepared):
        from src.data.pipeline import create_eval_dataset
        from src.detections import PostProcessor
        from src.engine.evaluator import build_inference_network

        self.config, self.prepared = config, prepared
        self.net = build_inference_network(config, fold_bn=False)  # parameters copied in
        self.dataset = create_eval_dataset(prepared.files, config.eval_batch_size,
                                           config.img_shape, config.num_parallel_workers)
        self.postprocessor = PostProcessor.from_config(config, prepared.source.category_ids)

    def __call__(self, network, output_dir, epoch):
        from src.engine.evaluator import run_inference
        from src.metrics import coco_evaluate

        source = {p.name.split("network.", 1)[-1]: p for p in network.get_parameters()}
        for param in self.net.get_parameters():
            param.set_data(Tensor(source[param.name.split("network.", 1)[-1]].asnumpy()))
        detections, img_ids = run_inference(self.net, self.dataset, self.config.eval_batch_size,
                                            self.postprocessor, self.config.progress,
                                            desc=f"eval epoch {epoch}")
        return coco_evaluate(self.prepared.ground_truth, detections, img_ids,
                             os.path.join(output_dir, "detections_last_eval.json")).stats


def run_epoch(train_step, dataset, position, config, lr_table, log, stop, guard_state, epoch,
              steps_per_epoch, first_batch, say=print, world=1):
    """Train one epoch (from ``first_batch``); returns (losses, skipped, stopped early).
    Images per second count every device's images."""
    images_per_step = config.batch_size * world
    bar = Progress(steps_per_epoch - first_batch, f"epoch {epoch}/{config.epoch_size}",
                   config.progress)
    losses, skipped, tick = [], 0, time.time()
    try:
        for image, box, label, num_match, img_id in dataset.create_tuple_iterator(num_epochs=1):
            lr = float(lr_table[min(position.global_step, len(lr_table) - 1)])
            loss, cls_loss, loc_loss, finite, scale = train_step(image, box, label, num_match)
            loss, cls_loss, loc_loss = (float(v.asnumpy()) for v in (loss, cls_loss, loc_loss))
            finite = bool(finite.asnumpy())
            now = time.time()
            step_seconds, tick = now - tick, now
            position.global_step += 1
            position.step_in_epoch += 1
            position.epoch = epoch
            log.write("step", epoch=epoch, global_step=position.global_step, loss=loss,
                      cls_loss=cls_loss, loc_loss=loc_loss, lr=lr, finite=finite,
                      loss_scale=float(scale.asnumpy()), step_seconds=round(step_seconds, 4),
                      img_per_s=round(images_per_step / step_seconds, 3))
            bar.update(loss=loss, cls=cls_loss, loc=loc_loss, lr=lr,
                       **{"img/s": images_per_step / step_seconds})
            if finite:
                guard_state["in_a_row"] = 0
                losses.append(loss)
            else:
                skipped += 1
                guard_state["in_a_row"] += 1
                ids = img_id.asnumpy().ravel().tolist()
                say(f"\nstep {position.global_step}: non-finite loss or gradient "
                      f"(loss {loss}); update skipped; images {ids}", flush=True)
                if guard_state["in_a_row"] >= config.max_nonfinite_steps:
                    raise TrainingError(
                        f"{guard_state['in_a_row']} non-finite steps in a row, the last at step "
                        f"{position.global_step} (epoch {epoch}) on images {ids}; stopping. The "
                        "last good checkpoint is kept: lower --lr, or look at those images")
            if stop.agreed():
                return losses, skipped, True
    finally:
        bar.close()
    return losses, skipped, False


def train(config):
    """Train as configured; returns a summary dict (paths, losses, time)."""
    run = start_run(config, DEFAULT_OUTPUT_DIR, distribute=config.distribute)
    output_dir, platform, main = run.output_dir, run.platform, run.is_main
    if config.device_num and config.device_num != run.world:
        raise ValueError(f"--device_num {config.device_num} but MindSpore reports {run.world} "
                         "processes in this job; leave --device_num out")
    say = print if main else (lambda *args, **kwargs: None)
    if config.check_dataset:
        return check_split(config, "train")
    prepared = prepare_split(config, "train", output_dir, progress=main, log=say)
    classes_given = bool(config.num_classes)
    config = with_data_classes(config, prepared.source, say)
    save_run_config(config, run)
    if config.only_create_dataset:
        say(f"MindRecord set ready: {os.path.dirname(prepared.files[0])}")
        return {"mindrecord_files": prepared.files}
    eval_split = prepare_split(config, "eval", output_dir, progress=main, log=say) \
        if config.eval_interval else None

    coder = BoxCoder(default_boxes_from_config(config), config.match_threshold,
                     config.prior_scaling)

    def epoch_data(epoch):
        return create_train_dataset(prepared.files, coder, config.batch_size, config.img_shape,
                                    num_shards=run.world, shard_id=run.rank,
                                    num_workers=config.num_parallel_workers, seed=config.seed,
                                    epoch=epoch)

    per_rank_images = math.ceil(prepared.images / run.world)   # shards are padded to equal size
    steps_per_epoch = per_rank_images // config.batch_size
    if steps_per_epoch == 0:
        raise DatasetError(f"{per_rank_images} training images per device make no full batch "
                           f"of --batch_size {config.batch_size}")
    network = build_ssd(config)
    if config.pre_trained:
        load_pretrained(config, network, say)
    if config.freeze_bn:
        say(f"--freeze_bn: {freeze_batch_norm(network)} BatchNorm layers use running statistics")
    precision = resolve_precision(config, platform)
    if precision == "fp16":
        network.to_float(ms.float16)
    loss_scale = resolve_loss_scale(config, platform, precision)
    lr_table = lr_from_config(config, steps_per_epoch, run.world)
    optimizer = create_optimizer(network, lr_table, config.momentum, config.weight_decay)
    loss = SSDWithLossCell(network, config.gamma, config.alpha, config.loss_norm == "global",
                           run.world)
    train_step = TrainStep(loss, optimizer,
                           loss_scale, dynamic=config.loss_scale_mode == "dynamic")
    train_step.set_train(True)
    evaluator = EvalDuringTraining(config, eval_split) if eval_split and main else None

    start = config.pre_trained_epoch_size
    position = Position(start, steps_per_epoch, start * steps_per_epoch)
    resume_path = find_resume_checkpoint(config.resume, output_dir) if config.resume else None
    if resume_path:
        position = restore(train_step, resume_path, steps_per_epoch)
        say(f"Resuming from {resume_path}: epoch {position.epoch}, step {position.step_in_epoch}"
              f"/{steps_per_epoch}, global step {position.global_step}", flush=True)
    elif config.resume:
        say(f"--resume auto: no checkpoint in {output_dir} yet, starting fresh", flush=True)
    optimizer.global_step.set_data(Tensor(np.array([position.global_step], np.int32)))
    first_epoch, first_batch = position.next_start(steps_per_epoch)
    if first_epoch > config.epoch_size:
        raise ValueError(f"nothing left to train: epoch {position.epoch} is done and "
                         f"--epoch_size is {config.epoch_size}")
    say(model_summary(config, network, platform, precision, loss_scale, prepared.images,
                      steps_per_epoch, output_dir, float(lr_table.max()), run.world,
                      classes_given), flush=True)

    log = MetricsLog(os.path.join(output_dir, LOG_NAME),
                     keep_until_step=position.global_step if resume_path else None,
                     enabled=main)
    curve_path = os.path.join(output_dir, CURVE_NAME)
    best = {"mAP": max([r["mAP"] for r in read_jsonl(log.path) if r.get("kind") == "eval"],
                       default=-1.0) if main else -1.0}
    run_start, epoch_losses, checkpoint, skipped_total = time.time(), [], None, 0
    guard_state = {"in_a_row": 0}

    def save(path):
        if not main:
            return path
        return save_checkpoint(train_step, path, state_entries(
            epoch=position.epoch, step_in_epoch=position.step_in_epoch,
            global_step=position.global_step, seed=config.seed,
            steps_per_epoch=steps_per_epoch, class_names=prepared.source.class_names))

    try:
        with StopRequest(run.world) as stop:
            for epoch in range(first_epoch, config.epoch_size + 1):
                dataset = epoch_data(epoch)
                skip = first_batch if epoch == first_epoch else 0
                if skip:
                    dataset = dataset.skip(skip)
                position.epoch, position.step_in_epoch = epoch, skip
                epoch_start = time.time()
                losses, skipped, stopped = run_epoch(
                    train_step, dataset, position, config if main else config.replace(
                        progress="off"), lr_table, log, stop, guard_state, epoch,
                    steps_per_epoch, skip, say, run.world)
                skipped_total += skipped
                if stopped:
                    checkpoint = save(os.path.join(output_dir, checkpoint_name(
                        epoch, position.step_in_epoch)))
                    say(f"Stopped by {stop.requested} at epoch {epoch}, step "
                          f"{position.step_in_epoch}/{steps_per_epoch}. Saved {checkpoint}.\n"
                          f"Resume with the same command plus --resume auto", flush=True)
                    return {"checkpoint": checkpoint, "stopped": stop.requested,
                            "output_dir": output_dir}
                seconds = time.time() - epoch_start
                mean_loss = float(np.mean(losses)) if losses else float("nan")
                epoch_losses.append(mean_loss)
                log.write("epoch", epoch=epoch, global_step=position.global_step,
                          mean_loss=mean_loss, seconds=round(seconds, 2), skipped_steps=skipped)
                done = len(losses) + skipped
                say(f"epoch {epoch}/{config.epoch_size}: mean loss {mean_loss:.4f}, "
                      f"{seconds:.1f} s ({done * config.batch_size * run.world / seconds:.2f} "
                      "img/s)"
                      f"{f', {skipped} non-finite steps skipped' if skipped else ''}, about "
                      f"{format_duration((config.epoch_size - epoch) * seconds)} left",
                      flush=True)
                if epoch % config.save_checkpoint_epochs == 0 or epoch == config.epoch_size:
                    checkpoint = save(os.path.join(output_dir,
                                                   checkpoint_name(epoch, steps_per_epoch)))
                    if main:
                        prune_checkpoints(output_dir, config.keep_checkpoint_max)
                    say(f"Saved checkpoint {checkpoint}", flush=True)
                if evaluator and epoch >= config.eval_start_epoch and (
                        epoch % config.eval_interval == 0 or epoch == config.epoch_size):
                    stats = evaluator(network, output_dir, epoch)
                    log.write("eval", epoch=epoch, global_step=position.global_step,
                              mAP=float(stats[0]), AP50=float(stats[1]), AP75=float(stats[2]))
                    note = ""
                    if stats[0] > best["mAP"]:
                        best["mAP"] = float(stats[0])
                        save(os.path.join(output_dir, BEST_NAME))
                        note = f"; new best, saved {os.path.join(output_dir, BEST_NAME)}"
                    print(f"eval epoch {epoch}: mAP {stats[0]:.4f}, AP50 {stats[1]:.4f}{note}",
                          flush=True)
                if main:
                    plot_training_curves(log.path, curve_path)
    finally:
        log.close()
    total = time.time() - run_start
    trend = (f"loss {epoch_losses[0]:.4f} (first epoch mean) -> {epoch_losses[-1]:.4f} (last)"
             if epoch_losses else "")
    say(f"Training done in {format_duration(total)}: {trend}; checkpoint {checkpoint}; "
          f"curves {curve_path}; log {log.path}", flush=True)
    return {"checkpoint": checkpoint, "epoch_losses": epoch_losses, "seconds": total,
            "log": log.path, "curve": curve_path, "skipped_steps": skipped_total,
            "output_dir": output_dir, "best_map": best["mAP"]}
