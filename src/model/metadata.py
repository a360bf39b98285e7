"""What a checkpoint says about itself besides its weights, written and read in one place: the
class names, the default-box settings and (training checkpoints) the position, stored as extra
entries under ``STATE_PREFIX``; and the class head's width, from which the class count of a
checkpoint without names (the reference's) follows. The inference path (eval.py, predict.py,
export.py) reads it here, without training's checkpoint code.
"""
import json
from dataclasses import dataclass, field
from typing import Callable, Optional

import mindspore as ms

from src.anchors import box_settings
from src.config import Config
from src.model.ssd import CLASS_HEAD_BIAS
from src.model.weights import (
    DEFAULT_BOXES,
    STATE_PREFIX,
    CheckpointError,
    check_default_boxes,
    read_checkpoint,
)
from src.text import listed

STATE_KEYS = ("epoch", "step_in_epoch", "global_step", "seed", "steps_per_epoch")
CLASS_NAMES = STATE_PREFIX + "class_names"
INFERENCE_ADVICE = ("Its offsets would be decoded against boxes it did not learn: give the "
                    "settings it was trained with (the --config file of its training run, or "
                    "{flags})")


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's own entries: ``class_names`` (None when it stores none), ``entries``
    (its STATE_PREFIX parameters, by name: the raw position values and box settings) and
    ``class_head_width`` (None without a class head)."""
    class_names: Optional[tuple] = None
    entries: dict = field(default_factory=dict)
    class_head_width: Optional[int] = None

    def class_count(self, config: Config) -> Optional[int]:
        """Classes (background included): the stored names, else the class head's width /
        boxes per cell of ``config``; None without either."""
        if self.class_names:
            return len(self.class_names)
        if self.class_head_width is None:
            return None
        return self.class_head_width // int(config.num_default[0])


def read_metadata(path: str) -> CheckpointMeta:
    """``path``'s CheckpointMeta, in one read of only those entries; CheckpointError naming
    the file when it cannot be read as a MindSpore checkpoint."""
    def wanted(name):
        return name.startswith(STATE_PREFIX) or name.endswith(CLASS_HEAD_BIAS)

    try:
        found = ms.load_checkpoint(path, choice_func=wanted)
    except (ValueError, RuntimeError, OSError) as exc:
        # MindSpore refuses a choice that selects nothing as it refuses an unreadable file
        read_checkpoint(path)     # CheckpointError if the file cannot be read at all
        if isinstance(exc, ValueError):
            return CheckpointMeta()   # readable, without any of these entries
        raise CheckpointError(f"{path}: cannot be read as a MindSpore checkpoint ({exc})") \
            from exc
    names = None
    if CLASS_NAMES in found:
        try:
            names = tuple(json.loads(str(found[CLASS_NAMES])))
        except (TypeError, ValueError):
            names = None
    heads = [p for n, p in found.items() if n.endswith(CLASS_HEAD_BIAS)]
    return CheckpointMeta(names, {n: p for n, p in found.items() if n.startswith(STATE_PREFIX)},
                          int(heads[0].shape[0]) if heads else None)


def metadata_entries(config: Config, **state) -> dict:
    """append_dict entries of a training checkpoint: the position (ints), class names and the
    default-box settings of ``config`` (``src.anchors.box_settings``), as JSON strings."""
    entries: dict = {STATE_PREFIX + key: int(state[key]) for key in STATE_KEYS}
    entries[CLASS_NAMES] = json.dumps(list(state["class_names"]))
    entries[DEFAULT_BOXES] = json.dumps(box_settings(config))
    return entries


def read_class_names(path: str) -> Optional[tuple]:
    """Class names a training checkpoint stores (tuple), or None (also for a file that cannot
    be read: loading its weights reports that)."""
    try:
        return read_metadata(path).class_names
    except CheckpointError:
        return None


def checkpoint_class_count(config: Config, path: str) -> Optional[int]:
    """Classes (background included) a detector checkpoint was trained for
    (``CheckpointMeta.class_count``); None when it holds no class head."""
    return read_metadata(path).class_count(config)


def describe_checkpoint_classes(path: str, count: int) -> str:
    """'the checkpoint PATH was trained for N classes (N+1 with background: a, b ...)'."""
    names = read_class_names(path)
    shown = f": {listed(names[1:])}" if names and len(names) == count else ""
    classes = "1 class" if count == 2 else f"{count - 1} classes"
    return f"the checkpoint {path} was trained for {classes} ({count} with background{shown})"


def with_checkpoint_classes(config: Config, path: str, log: Callable = print) -> Config:
    """``config`` with ``num_classes`` read from a detector checkpoint when it was not given
    (0): its stored class names, else its first class head's width / boxes per cell."""
    if config.num_classes:
        return config
    count = checkpoint_class_count(config, path)
    if count is None:
        return config.replace(num_classes=config.class_count)
    log(f"num_classes {count}: from the checkpoint {path}")
    return config.replace(num_classes=count)


def check_inference_boxes(config: Config, path: str) -> None:
    """``build_inference_network``'s default-box check, before any work (it reads only the
    stored settings); a file that cannot be read is left to the weights' loading to report."""
    try:
        entries = read_metadata(path).entries
    except CheckpointError:
        return
    check_default_boxes(entries, config, path, INFERENCE_ADVICE)
