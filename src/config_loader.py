"""Reading a Config (``src.config``): the YAML file given with ``--config`` and command-line
flags, each script's --help.

Precedence, lowest first: the keys' defaults, the YAML file, then command-line flags. Every
key is a flag (``--batch_size 8``); the reference's own flags keep their names and meaning
(``--data_url``, ``--train_url``, ``--mindrecord_url``, ``--run_platform`` ...). Nothing here
imports MindSpore.
"""
import argparse
import os
import sys
from dataclasses import dataclass, fields
from typing import Optional

import yaml

from src.config import (
    DATA_URL_KEYS,
    DERIVED_FROM,
    DERIVED_KEYS,
    RETIRED_KEYS,
    Config,
    ConfigError,
    _plain,
)


def _as_tuple(value):
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def _coerce(name, value, default):
    """Convert a YAML or command-line value to the type of the key's default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, str):
            text = value.strip()
            if not text.startswith(("[", "(")):
                text = f"[{text}]"
            try:
                value = yaml.safe_load(text.replace("(", "[").replace(")", "]"))
            except yaml.YAMLError as exc:
                raise ConfigError(f"{name}: cannot read {value!r} as a list") from exc
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return _as_tuple(value)
    if isinstance(default, (int, float)):
        kind = type(default)
        try:
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            number = kind(float(value)) if kind is int else float(value)
        except (TypeError, ValueError, OverflowError):   # OverflowError: int(float("inf"))
            noun = "an integer" if kind is int else "a number"
            raise ConfigError(f"{name}: expected {noun}, got {value!r}") from None
        return number
    if value is None:
        return ""
    return str(value)


@dataclass(frozen=True)
class _Claim:
    """A derived key's value as a file or flag gave it, checked once the Config is made."""

    source: str
    value: object


def _claim(source, name, value):
    return _Claim(source, _coerce(f"{source}: {name}", value, DERIVED_KEYS[name](Config())))


def load_yaml(path: str) -> dict:
    """Read a YAML config file into {key: value}; unknown keys are errors naming the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    defaults = {f.name: f.default for f in fields(Config)}
    values = {}
    for name, value in data.items():
        if name in RETIRED_KEYS:
            raise ConfigError(f"{path}: key {name!r} is not used here: {RETIRED_KEYS[name]}")
        if name in DERIVED_KEYS:
            values[name] = _claim(path, name, value)
            continue
        if name not in defaults:
            raise ConfigError(f"{path}: unknown key {name!r}")
        values[name] = _coerce(f"{path}: {name}", value, defaults[name])
    return values


# --help's groups, in order, and the group of each key (by its section, but for the keys below).
HELP_GROUPS = ("data", "model", "training", "evaluation", "device", "distributed", "run")
SECTION_GROUPS = {"data": "data", "model": "model", "anchors": "model", "boxes": "model",
                  "loss": "training", "train": "training", "postprocess": "evaluation",
                  "run": "run"}
KEY_GROUPS = {
    **dict.fromkeys(("distribute", "device_num", "loss_norm", "all_reduce_fusion"),
                    "distributed"),
    **dict.fromkeys(("run_platform", "device_id", "ascend_precision_mode", "jit_level",
                     "conv_impl", "conv_dtype", "layout_block", "conv_algorithm", "conv_threads",
                     "malloc_arenas", "precision", "amp_level", "loss_scale", "loss_scale_mode",
                     "data_sink", "data_workers", "input_dtype", "num_parallel_workers"),
                    "device"),
    **dict.fromkeys(("eval_batch_size", "eval_interval", "eval_start_epoch", "checkpoint_path",
                     "backend", "quantize", "calibration_images"), "evaluation")}
# What each entry script reads: its --help shows these groups without the keys named after
# them. Other keys stay accepted (a YAML config written for training carries them all) and
# change nothing there.
POSTPROCESS_KEYS = ("min_score", "nms_threshold", "max_boxes", "max_detections_per_image",
                    "drop_crowd", "coco_evaluator", "nms_plus_one")
TRAINING_ONLY = ("precision", "amp_level", "loss_scale", "loss_scale_mode", "data_sink",
                 "data_workers", "input_dtype", "eval_interval", "eval_start_epoch",
                 "ascend_precision_mode")
SCRIPT_KEYS = {
    "train.py": (HELP_GROUPS, ("checkpoint_path", "backend", "quantize", "calibration_images")),
    "eval.py": (("data", "model", "evaluation", "device", "run"), TRAINING_ONLY),
    "predict.py": (("model", "evaluation", "device", "run"),
                   TRAINING_ONLY + ("coco_evaluator", "drop_crowd")),
    "export.py": (("model", "evaluation", "device", "run"),
                  TRAINING_ONLY + POSTPROCESS_KEYS + ("eval_batch_size", "checkpoint_path",
                                                      "backend", "progress")),
    "postprocess.py": (("model", "evaluation", "run"),
                       ("eval_batch_size", "eval_interval", "eval_start_epoch",
                        "checkpoint_path", "backend", "quantize", "calibration_images")),
}


def help_group(name: str) -> str:
    """The --help group of config key ``name``."""
    section = {f.name: f.metadata["section"] for f in fields(Config)}[name]
    return KEY_GROUPS.get(name, SECTION_GROUPS[section])


def shown_in_help(name: str, script: str) -> bool:
    """Whether ``script``'s --help lists config key ``name`` (every key when the script is not
    in SCRIPT_KEYS)."""
    if script not in SCRIPT_KEYS:
        return True
    groups, hidden = SCRIPT_KEYS[script]
    return help_group(name) in groups and name not in hidden


def build_parser(description: str, script: str = "",
                 own: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per config key plus the reference's flag names.

    Flags not given on the command line are absent from the parsed namespace, so YAML values are
    only overridden by what the user typed. --help lists, group by group (``HELP_GROUPS``),
    the keys ``script`` reads, each with its default, after ``own``: the script's own flags
    (parsed before, by the script).
    """
    parser = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS,
                                     allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    taken: set = set()   # the script's own flags: they win over a config key's same name
    if own is not None:
        taken = {s for action in own._actions for s in action.option_strings}
        mine = parser.add_argument_group(f"{script or 'this script'}'s own flags")
        for action in own._actions:   # listed for --help; the script has parsed them already
            if not action.option_strings:
                continue
            default = "" if action.default in (None, False, argparse.SUPPRESS) else \
                f" (default: {action.default})"
            copied: dict = {"dest": f"own_{action.dest}",
                            "help": (action.help or "see above") + default}
            if action.nargs == 0:
                copied["action"] = "store_true"
            else:
                copied["metavar"] = ("|".join(action.choices) if action.choices else
                                     action.metavar or action.dest.upper())
                if action.nargs:
                    copied["nargs"] = action.nargs
            mine.add_argument(*action.option_strings, **copied)
    groups = {name: parser.add_argument_group(name) for name in HELP_GROUPS}
    for f in fields(Config):
        names = [n for n in (f"--{f.name}", *f.metadata["flags"]) if n not in taken]
        if not names:
            continue
        shown = shown_in_help(f.name, script)
        kwargs: dict = {"dest": f.name,
                        "help": f"{f.metadata['help']} (default: {_plain(f.default)})"
                        if shown else argparse.SUPPRESS}
        if isinstance(f.default, bool):
            kwargs.update(nargs="?", const="true", metavar="true|false")
        elif f.metadata["choices"]:
            kwargs["metavar"] = "|".join(f.metadata["choices"])
        (groups[help_group(f.name)] if shown else parser).add_argument(*names, **kwargs)
    data_shown = script not in SCRIPT_KEYS or "data" in SCRIPT_KEYS[script][0]
    (groups["data"] if data_shown else groups["run"]).add_argument(
        "--data_url", dest="data_url",
        help="dataset root for --dataset (sets coco_root, voc_root, yolo_data or image_dir)"
        + ("" if data_shown else "; here only for --quantize int8's calibration images"))
    derived = parser.add_argument_group("derived (accepted when they agree with the keys)")
    for name, source in DERIVED_FROM.items():
        derived.add_argument(f"--{name}", dest=name, help=f"follows from {source}")
    return parser


def parse_config(argv: Optional[list] = None, description: str = "",
                 overrides: Optional[dict] = None, script: str = "",
                 own: Optional[argparse.ArgumentParser] = None) -> Config:
    """Parse flags (and the YAML named by --config) into a validated Config.

    ``overrides`` are script-specific defaults applied before the YAML file, e.g. an output folder.
    ``script`` and ``own``: what --help lists (``build_parser``).
    Errors print the usage line and exit with status 2, as argparse does.
    """
    parser = build_parser(description, script, own)
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    try:
        return config_from_values(args, overrides)
    except ConfigError as exc:
        parser.error(str(exc))


def config_from_values(args: dict, overrides: Optional[dict] = None) -> Config:
    """Config from a {key: raw value} mapping of flags (see ``parse_config``)."""
    args = dict(args)
    defaults = {f.name: f.default for f in fields(Config)}
    values = dict(overrides or {})
    config_file = args.get("config")
    sources = {}
    if config_file:
        from_file = load_yaml(config_file)
        values.update(from_file)
        sources.update({name: f"{config_file}: {name}" for name in from_file})
    data_url = args.pop("data_url", None)
    for name, raw in args.items():
        if name in DERIVED_KEYS:
            values[name] = _claim("command line", name, raw)
        else:
            values[name] = _coerce(f"--{name}", raw, defaults[name])
            sources[name] = f"--{name}"
    if data_url is not None:
        dataset = values.get("dataset", defaults["dataset"])
        values[DATA_URL_KEYS[dataset]] = data_url
    if "DEVICE_ID" in os.environ and "device_id" not in args:
        values["device_id"] = _coerce("DEVICE_ID", os.environ["DEVICE_ID"], 0)
        sources["device_id"] = "DEVICE_ID"
    return _make(values, sources)


def _make(values: dict, sources: Optional[dict] = None) -> Config:
    claims = {name: values.pop(name) for name in DERIVED_KEYS if name in values}
    platform = str(values.get("run_platform", "auto"))
    spelled = {p.lower(): p for p in ("auto", "CPU", "GPU", "Ascend")}
    values["run_platform"] = spelled.get(platform.lower(), platform)
    config = Config(**values).validate(sources)
    for name, claim in claims.items():
        actual = DERIVED_KEYS[name](config)
        if claim.value != actual:
            raise ConfigError(f"{claim.source}: {name} {_plain(claim.value)} disagrees with "
                              f"{_plain(actual)}, which follows from {DERIVED_FROM[name]}: "
                              f"leave {name} out")
    return config


def load_config(path: Optional[str] = None, **changes) -> Config:
    """A Config from defaults, an optional YAML file and keyword changes (for Python callers)."""
    values = load_yaml(path) if path else {}
    sources = {name: f"{path}: {name}" for name in values}
    defaults = {f.name: f.default for f in fields(Config)}
    for name, value in changes.items():
        sources.pop(name, None)
        if name in DERIVED_KEYS:
            values[name] = _claim("load_config", name, value)
            continue
        if name not in defaults:
            raise ConfigError(f"unknown key {name!r}")
        values[name] = _coerce(name, value, defaults[name])
    if path:
        values["config"] = path
    return _make(values, sources)
