"""The one configuration of the project: its keys, declared once in the ``Config`` dataclass
with their defaults (the reference's values, spec section 13), help, flag names, allowed values
and checks. Reading a YAML file and command-line flags into a Config is ``src.config_loader``'s.
Nothing here imports MindSpore.
"""
import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Optional

import yaml

from src.cpu import LOCAL_PROCESSES_VARIABLE, usable_cores
from src.files import write_atomic

# Keys of the reference's config that are not used here (spec section 13): no effect there
# (defect 4), a broken loading path (feature_extractor_base_param, defect 6), or a file this
# repository writes itself (voc_json, spec section 7.2).
RETIRED_KEYS = {
    "global_step": "the step is stored in every checkpoint and restored from it",
    "extras_in_channels": "the extra blocks' inputs follow from extras_out_channels",
    "extras_ratios": "it was never read by the reference model",
    "feature_extractor_base_param": "pass a backbone checkpoint with --pre_trained",
    "voc_json": "evaluation writes the ground truth it scores against next to its results",
}


COCO_NUM_CLASSES = 81

# Keys of the reference's config whose values follow from other keys: accepted (in YAML and on
# the command line) only when they agree, never stored.
DERIVED_KEYS = {
    "model": lambda config: "ssd_resnet34",
    "num_default": lambda config: config.num_default,
    "num_ssd_boxes": lambda config: config.num_ssd_boxes,
}
DERIVED_FROM = {"model": "the only model of this repository",
                "num_default": "aspect_ratios (2 + 2 per ratio)",
                "num_ssd_boxes": "feature_size and aspect_ratios"}


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and the source."""


def _key(default, help_text, *, flags=(), choices=None, check=None, allowed="",
         section="run"):
    """A config field with its command-line help, extra flag names, allowed values and check
    (``allowed`` says in words what the check accepts; the checks below say it themselves)."""
    meta = {"help": help_text, "flags": tuple(flags), "choices": choices, "check": check,
            "allowed": allowed or ALLOWED.get(check, ""), "section": section}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


def _positive(value):
    return value > 0


def _non_negative(value):
    return value >= 0


def _fraction(value):
    return 0.0 <= value <= 1.0


ALLOWED = {_positive: "above 0", _non_negative: "0 or above", _fraction: "from 0 to 1"}


def _finite(value):
    """Whether a number, or every number of a (nested) tuple, is finite (not inf or nan)."""
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or (value == value and abs(value) != float("inf"))


@dataclass
class Config:
    """Every setting of the project. Defaults reproduce the reference (spec sections 1-8, 13)."""

    # --- model (spec 1-3)
    img_shape: tuple = _key((300, 300), "network input (height, width)", section="model")
    num_classes: int = _key(0, "classes including background; 0: from the data (training, "
                               "evaluation), else from the checkpoint (predict, export), else "
                               f"{COCO_NUM_CLASSES} (COCO's 80 + background, the reference's)",
                            check=lambda v: v == 0 or v >= 2, allowed="0 or at least 2",
                            section="model")
    classes: tuple = _key((), "class names, 'background' first; empty: from the data (COCO "
                              "categories, VOC object names, class_1.. for TXT)", section="model")
    extras_out_channels: tuple = _key((256, 512, 512, 256, 256, 256),
                                      "channels of the six feature maps", section="model")
    cls_bias_prior: float = _key(0.0, "initial object probability p of the class head: "
                                      "biases log(p/(1-p)) on every object class and "
                                      "log((1-p)/p) on background (RetinaNet's prior, e.g. "
                                      "0.01); 0: zero biases, as the reference, every score "
                                      "starting at 0.5",
                                 check=lambda v: 0.0 <= v < 0.5,
                                 allowed="from 0 up to (not including) 0.5", section="model")
    bn_momentum: float = _key(0.0, "momentum m of every BatchNorm's running statistics "
                                   "(running = m * running + (1 - m) * batch); 0: the "
                                   "reference's, 0.9 in the backbone and 0.97 in the heads",
                              check=lambda v: 0.0 <= v < 1.0,
                              allowed="from 0 up to (not including) 1", section="model")
    conv_impl: str = _key("auto", "convolutions: auto (our oneDNN kernels on CPU when built, "
                                  "else MindSpore's), mindspore, or onednn",
                          choices=("auto", "mindspore", "onednn"), section="model")
    conv_dtype: str = _key("float32", "arithmetic of our oneDNN convolutions: float32, or "
                                      "bfloat16 (float32 accumulation; AMX where the CPU has it)",
                           choices=("float32", "bfloat16"), section="model")
    layout_block: str = _key("auto", "channels per block of the blocked activations between our "
                                     "CPU layers: auto (16 where oneDNN runs AVX-512, 8 with "
                                     "AVX2), 16, 8, or plain (NCHW throughout)",
                             choices=("auto", "16", "8", "plain"), section="model")
    conv_algorithm: str = _key("auto", "forward and input gradient of our 3x3 stride-1 CPU "
                                       "convolutions: auto (Winograd F(4x4, 3x3) where both "
                                       "channel counts are at least 128, direct elsewhere), "
                                       "direct, or winograd (every such layer in the blocked "
                                       "region)",
                               choices=("auto", "direct", "winograd"), section="model")
    conv_threads: int = _key(0, "threads of our CPU kernels (0: one per core of the machine)",
                             check=_non_negative, section="model")
    extras_strides: tuple = _key((1, 1, 2, 2, 2, 1),
                                 "strides of the extra blocks (entries 2..5 are used)",
                                 section="model")
    # --- default boxes (spec 4)
    feature_size: tuple = _key((38, 19, 10, 5, 3, 1), "feature-map sizes", section="anchors")
    min_scale: float = _key(0.2, "smallest default-box scale", check=_positive, section="anchors")
    max_scale: float = _key(0.95, "largest default-box scale", check=_positive, section="anchors")
    aspect_ratios: tuple = _key(((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                                "aspect ratios per feature map", section="anchors")
    steps: tuple = _key((7, 15, 30, 60, 100, 300),
                        "anchor steps in pixels; the reference's (7,15,...) leave the bottom-right "
                        "uncovered (spec defect 1), (8,16,32,64,100,300) cover it",
                        section="anchors")
    # --- matching and box coding (spec 5)
    match_threshold: float = _key(0.5, "IoU above which a default box matches a ground truth",
                                  check=_fraction, section="boxes")
    prior_scaling: tuple = _key((0.1, 0.2), "box-coding variances (centre, size)",
                                section="boxes")
    # --- loss (spec 6)
    gamma: float = _key(2.0, "focal-loss gamma", check=_non_negative, section="loss")
    alpha: float = _key(0.75, "focal-loss alpha", check=_fraction, section="loss")
    # --- post-processing (spec 9)
    min_score: float = _key(0.1, "score threshold (strictly above) per class", check=_fraction,
                            section="postprocess")
    nms_threshold: float = _key(0.6, "NMS IoU threshold (boxes above it are suppressed)",
                                check=_fraction, section="postprocess")
    max_boxes: int = _key(100, "detections kept per class per image", check=_positive,
                          section="postprocess")
    max_detections_per_image: int = _key(0, "detections kept per image across classes "
                                            "(0 = no cap, as the reference)",
                                         check=_non_negative, section="postprocess")
    drop_crowd: bool = _key(False, "score only images without crowd boxes and with at least one "
                                   "box, the reference's protocol (spec defect 18)",
                            section="postprocess")
    coco_evaluator: str = _key("ultrafast", "COCOeval used for mAP: ultrafast "
                                            "(ultrafast-pycocotools, bit-identical to "
                                            "pycocotools and ~40x faster) or pycocotools",
                               choices=("ultrafast", "pycocotools"), section="postprocess")
    nms_plus_one: bool = _key(True, "IoU of pixel boxes with the '+1' convention, as the "
                                    "reference (spec defect 24)", section="postprocess")
    # --- optimisation (spec 8)
    lr: float = _key(0.0, "peak learning rate; 0: 0.075 x global batch / 256 (the reference's "
                          "0.075 for 8 devices x 32 images, scaled linearly)",
                     check=_non_negative, section="train")
    lr_init: float = _key(0.001, "learning rate at the start of warm-up", check=_non_negative,
                          section="train")
    lr_end_rate: float = _key(0.001, "final learning rate as a fraction of --lr",
                              check=_non_negative, section="train")
    warmup_epochs: float = _key(2.0, "linear warm-up length in epochs", check=_non_negative,
                                section="train")
    weight_decay: float = _key(4e-5, "weight decay on conv weights and head biases",
                               check=_non_negative, section="train")
    momentum: float = _key(0.9, "SGD momentum", check=_fraction, section="train")
    loss_scale: float = _key(1024.0, "loss scale (forced to 1 for fp32 on CPU)", check=_positive,
                             section="train")
    loss_scale_mode: str = _key("auto", "static: fixed --loss_scale; dynamic: halves on an "
                                        "overflowing step (skipped either way), doubles after "
                                        "1000 good ones; auto: dynamic on GPU and Ascend, static "
                                        "on CPU (the reference: static everywhere)",
                                choices=("auto", "static", "dynamic"), section="train")
    precision: str = _key("auto", "auto: fp16 on GPU (as the reference), fp32 elsewhere",
                          choices=("auto", "fp32", "fp16"), section="train")
    amp_level: str = _key("O2", "mixed precision of --precision fp16: O2 (MindSpore's "
                                "auto_mixed_precision: BatchNorm and the loss in fp32) or O3 "
                                "(the whole detector cast, as the reference on GPU)",
                          choices=("O2", "O3"), section="train")
    epoch_size: int = _key(500, "epochs to train", check=_positive, section="train")
    batch_size: int = _key(32, "images per step per device", check=_positive, section="train")
    seed: int = _key(1, "random seed (weights, data order, augmentation)", check=_non_negative,
                     section="train")
    pre_trained: str = _key("", "checkpoint to start from", section="train")
    pre_trained_epoch_size: int = _key(0, "epochs the --pre_trained checkpoint was trained for: "
                                          "the schedule resumes there",
                                       check=_non_negative, section="train")
    filter_weight: bool = _key(False, "drop the class and box heads of --pre_trained "
                                      "(to train another class count)", section="train")
    save_checkpoint_epochs: int = _key(10, "save a checkpoint every N epochs",
                                       check=_positive, section="train")
    keep_checkpoint_max: int = _key(20, "newest checkpoints kept", check=_positive,
                                    section="train")
    distribute: bool = _key(False, "data-parallel training over the processes that msrun (or a "
                                   "rank table on Ascend) started", section="train")
    device_num: int = _key(0, "devices of a distributed run as the reference's scripts pass it; "
                              "0: as MindSpore reports (a different value is an error)",
                           check=_non_negative, section="train")
    loss_norm: str = _key("device", "divide each device's loss by its own positives (device, as "
                                    "the reference) or by the mean over devices (global: N "
                                    "devices x batch B then train like 1 x N*B)",
                          choices=("device", "global"), section="train")
    freeze_bn: bool = _key(False, "BatchNorm uses its running statistics in training too (for "
                                  "tiny per-device batches; gamma and beta still train)",
                           section="train")
    resume: str = _key("", "continue a run: 'auto' (newest checkpoint in --output_dir) or a "
                           "checkpoint path", section="train")
    overwrite: bool = _key(False, "start a new run in an --output_dir that holds one: its files "
                                  "are moved into <output_dir>/previous-<time>/ first (without "
                                  "it, or --resume, such a folder is refused)",
                           section="train")
    eval_interval: int = _key(0, "evaluate every N epochs during training and keep best.ckpt "
                                 "(0: never)", check=_non_negative, section="train")
    eval_start_epoch: int = _key(1, "first epoch that may be evaluated", check=_positive,
                                 section="train")
    max_nonfinite_steps: int = _key(10, "stop after this many non-finite steps in a row",
                                    check=_positive, section="train")
    tensorboard: bool = _key(True, "write TensorBoard event files into <output_dir>/tensorboard "
                                   "(losses, learning rate, speed, evaluations with pictures): "
                                   "tensorboard --logdir <output_dir>", section="train")
    # --- data (spec 7)
    dataset: str = _key("coco", "dataset format: coco, voc, yolo (Ultralytics / Roboflow "
                                "export: data.yaml, images/, labels/), or other (the TXT format)",
                        choices=("coco", "voc", "yolo", "other"), section="data")
    coco_root: str = _key("", "COCO root (annotations/, train2017/, val2017/); --data_url sets it",
                          section="data")
    voc_root: str = _key("", "Pascal VOC root; --data_url sets it for --dataset voc",
                         section="data")
    yolo_data: str = _key("", "a YOLO dataset's data.yaml, or the folder holding it; --data_url "
                              "sets it for --dataset yolo", section="data")
    image_dir: str = _key("", "image folder of the TXT ('other') format; --data_url sets it",
                          section="data")
    anno_path: str = _key("", "annotation file of the TXT ('other') format", section="data")
    val_anno_path: str = _key("", "TXT annotation file for evaluation (default: --anno_path)",
                              section="data")
    train_data_type: str = _key("train2017", "COCO training split", section="data")
    val_data_type: str = _key("val2017", "COCO validation split", section="data")
    instances_set: str = _key("annotations/instances_{}.json", "COCO annotation file pattern",
                              section="data")
    voc_train_set: str = _key("train", "VOC training split (ImageSets/Main/<name>.txt)",
                              section="data")
    voc_val_set: str = _key("val", "VOC evaluation split (ImageSets/Main/<name>.txt)",
                            section="data")
    mindrecord_dir: str = _key("", "where MindRecord files are written "
                                   "(default: <output_dir>/mindrecord)",
                               flags=("--mindrecord_url", "--mindrecord"), section="data")
    mindrecord_shards: int = _key(8, "MindRecord shard files per set", check=_positive,
                                  section="data")
    only_create_dataset: bool = _key(False, "convert to MindRecord, then exit", section="data")
    check_dataset: bool = _key(False, "check the data, print the report, then exit",
                               section="data")
    check_images: bool = _key(True, "decode every image when checking (false: read only its "
                                    "size)", section="data")
    skip_bad_samples: bool = _key(False, "leave out images with errors (missing, undecodable, "
                                         "bad annotation) instead of stopping", section="data")
    skip_empty_images: bool = _key(False, "leave out images without boxes (kept as negatives "
                                          "by default)", section="data")
    crop_rule: str = _key("reference", "random-crop acceptance: reference (a crop is refused "
                                       "only if some box is below the sampled minimum IoU and "
                                       "some above it + 0.2, spec defect 19) or ssd (refused if "
                                       "any box is below it, as the SSD paper)",
                          choices=("reference", "ssd"), section="data")
    num_parallel_workers: int = _key(0, "data-pipeline workers per process; 0: this host's "
                                        "cores shared by the job's processes, at most 8",
                                     check=_non_negative, section="data")
    data_workers: str = _key("auto", "training augmentation in worker threads or processes; "
                                     "auto: threads on CPU (faster there), processes on GPU and "
                                     "Ascend (past Python's lock)",
                             choices=("auto", "threads", "processes"), section="data")
    input_dtype: str = _key("auto", "training images sent to the device as float32 (normalised "
                                    "on the host) or uint8 (normalised on the device: 0.27 of "
                                    "the bytes); auto: float32 on CPU, uint8 on GPU and Ascend",
                            choices=("auto", "float32", "uint8"), section="data")
    eval_batch_size: int = _key(8, "images per inference batch in evaluation", check=_positive,
                                section="data")
    # --- run
    config: str = _key("", "YAML file with any of these keys", section="run")
    run_platform: str = _key("auto", "device: auto, CPU, GPU or Ascend",
                             flags=("--device_target",),
                             choices=("auto", "CPU", "GPU", "Ascend"), section="run")
    ascend_precision_mode: str = _key(
        "allow_fp32_to_fp16", "Ascend operator precision (CANN precision_mode), set explicitly: "
        "allow_fp32_to_fp16 (the reference's on Ascend 910: matrix ops such as convolutions in "
        "fp16, vector ops in fp32), must_keep_origin_dtype (fp32 throughout), force_fp16, "
        "allow_mix_precision, force_fp32", choices=(
            "allow_fp32_to_fp16", "must_keep_origin_dtype", "force_fp16", "allow_mix_precision",
            "force_fp32"), section="run")
    jit_level: str = _key("auto", "MindSpore's graph compilation level (jit_config): O0 "
                                  "(kernel by kernel), O1 (with operator fusion), O2 (whole "
                                  "graph sunk, Ascend); auto: MindSpore's default",
                          choices=("auto", "O0", "O1", "O2"), section="run")
    all_reduce_fusion: tuple = _key((), "gradient indices where the data-parallel all-reduce "
                                        "splits into fusion groups (GPU, Ascend); empty: four "
                                        "groups of about equal size (the reference's 29, 58, 89 "
                                        "came from another network)", section="train")
    data_sink: str = _key("auto", "training batches through the device's queue (ms.data_sink) "
                                  "instead of one host iteration per step; auto: on GPU and "
                                  "Ascend, off on CPU (MindSpore has no CPU queue)",
                          choices=("auto", "on", "off"), section="train")
    log_interval: int = _key(0, "steps between reads of the step's loss and overflow flag "
                                "(log rows, progress bar, the non-finite check, the stop "
                                "agreement of distributed runs): each read waits for the "
                                "device; 0: every step on CPU, every 10 on GPU and Ascend",
                             check=_non_negative, section="train")
    device_id: int = _key(0, "device index (the DEVICE_ID environment variable if set)",
                          check=_non_negative, section="run")
    output_dir: str = _key("", "where checkpoints, logs and results go (default: outputs/train "
                               "for training, outputs/eval for evaluation)",
                           flags=("--train_url",), section="run")
    checkpoint_path: str = _key("", "checkpoint to evaluate", section="run")
    backend: str = _key("mindspore", "inference engine of eval.py and predict.py: mindspore "
                                     "(this repository's network), or the checkpoint exported "
                                     "to ONNX and run by onnxruntime or openvino",
                        choices=("mindspore", "onnxruntime", "openvino"), section="run")
    quantize: str = _key("none", "int8: eval.py and predict.py run the checkpoint quantized "
                                 "to int8 (NNCF post-training quantization, OpenVINO; "
                                 "calibrated on --calibration_images training images, cached "
                                 "beside the checkpoint)", choices=("none", "int8"),
                         section="run")
    calibration_images: int = _key(300, "training images that calibrate --quantize int8",
                                   check=_positive, section="run")
    malloc_arenas: int = _key(0, "glibc malloc arenas of the process (0: one per core): bounds "
                                 "the memory that new data-pipeline threads (each epoch's "
                                 "MindRecord reader, each evaluation) would otherwise add "
                                 "(glibc's default allows 8 per core)",
                              check=_non_negative, section="run")
    progress: str = _key("auto", "auto: a progress bar on a terminal, periodic lines otherwise",
                         choices=("auto", "bar", "lines", "off"), section="run")

    def validate(self, sources: Optional[dict] = None) -> "Config":
        """Check values and their agreement; raise ConfigError naming the key, where its value
        came from (``sources``: key -> '<file>: key' or '--key') and what it may be."""
        sources = sources or {}
        for f in fields(self):
            value = getattr(self, f.name)
            choices, check = f.metadata["choices"], f.metadata["check"]
            label = sources.get(f.name, f.name)
            if not _finite(value):
                shown = "holds a value that is" if isinstance(value, tuple) else "is"
                raise ConfigError(f"{label}: {_plain(value)} {shown} not a finite number "
                                  f"({f.metadata['help']})")
            if choices and value not in choices:
                raise ConfigError(f"{label}: {value!r} is not one of {', '.join(choices)}")
            if check and not check(value):
                allowed = f": it must be {f.metadata['allowed']}" if f.metadata["allowed"] else ""
                raise ConfigError(f"{label}: {value!r} is out of range{allowed} "
                                  f"({f.metadata['help']})")
        maps = len(self.feature_size)
        for name in ("extras_out_channels", "steps", "aspect_ratios"):
            if len(getattr(self, name)) != maps:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries but feature_size "
                                  f"has {maps}: one per feature map")
        if self.min_scale >= self.max_scale:
            raise ConfigError(f"min_scale ({self.min_scale}) must be below max_scale "
                              f"({self.max_scale})")
        if len(self.img_shape) != 2 or len(self.prior_scaling) != 2:
            raise ConfigError("img_shape and prior_scaling take two values each")
        if self.pre_trained_epoch_size and not self.pre_trained:
            raise ConfigError(f"pre_trained_epoch_size {self.pre_trained_epoch_size} says how "
                              "long the --pre_trained checkpoint was trained, but none is "
                              "given (to continue a run of this repository: --resume)")
        if self.classes and self.num_classes and len(self.classes) != self.num_classes:
            raise ConfigError(f"classes lists {len(self.classes)} names but num_classes is "
                              f"{self.num_classes} (background included)")
        return self

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def save(self, path: str) -> None:
        """Write the resolved config as YAML (loadable again with --config)."""
        def write(f):
            f.write("# Resolved configuration of this run: python train.py --config <this file>\n")
            yaml.safe_dump(self.to_dict(), f, sort_keys=False, allow_unicode=True)
            f.write("# Derived from the keys above (not settable):\n")
            for name, value in self.derived().items():
                f.write(f"#   {name}: {value}\n")

        write_atomic(path, write)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def num_default(self) -> tuple:
        """Default boxes per cell of each feature map: 2 + 2 per aspect ratio (spec 4)."""
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_ssd_boxes(self) -> int:
        """Default boxes of the whole image (8732 for the reference's settings)."""
        return sum(side * side * count for side, count in zip(self.feature_size, self.num_default))

    def derived(self) -> dict:
        """The values that follow from the keys (written as comments into config.yaml)."""
        return {name: _plain(rule(self)) for name, rule in DERIVED_KEYS.items()}

    @property
    def workers(self) -> int:
        """Data-pipeline workers per process: ``num_parallel_workers``, or when that is 0 the
        cores this process may use divided among the job's processes on this host (what
        scripts/run_distribute_train.sh tells each, ``SSD_LOCAL_PROCESSES``; else the whole
        job's MS_WORKER_NUM or RANK_SIZE, counted as if all ran here), between 1 and 8."""
        if self.num_parallel_workers:
            return self.num_parallel_workers
        cores = usable_cores()
        processes = 1
        for name in (LOCAL_PROCESSES_VARIABLE, "MS_WORKER_NUM", "RANK_SIZE"):
            if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 0:
                processes = int(os.environ[name])
                break
        return max(1, min(8, cores // processes))

    @property
    def class_count(self) -> int:
        """Classes including background: ``num_classes``, or when that is 0 (not given and not
        yet taken from data or a checkpoint) the length of ``classes``, else COCO's 81."""
        return self.num_classes or len(self.classes) or COCO_NUM_CLASSES

    @property
    def data_root(self) -> str:
        """Root folder of the selected dataset format."""
        return getattr(self, DATA_URL_KEYS[self.dataset])


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# The key --data_url sets, by --dataset.
DATA_URL_KEYS = {"coco": "coco_root", "voc": "voc_root", "yolo": "yolo_data", "other": "image_dir"}
