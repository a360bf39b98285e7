"""Checkpoints: written atomically, pruned to the newest N, loaded with a report of what matched.

A training checkpoint holds every parameter of the train step: the network's weights and
BatchNorm statistics (``network.*``), the optimizer's moments (``moments.*``), its global step,
and the loss-scale state, plus the epoch and the data-order seed. Names follow the reference
(``network.feature_extractor.module.layer1.0.conv1.weight`` ...), so its checkpoints load too.
"""
import glob
import os
import re
from dataclasses import dataclass
from typing import Optional

import mindspore as ms
import numpy as np

from src.config import Config
from src.files import WriteError, atomic_path, describe_write_error
from src.model.metadata import STATE_KEYS
from src.model.weights import (
    STATE_PREFIX,
    CheckpointError,
    check_default_boxes,
    read_checkpoint,
)
from src.text import listed

CHECKPOINT_PREFIX = "ssd"
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)_(\d+)\.ckpt$")


def checkpoint_name(epoch: int, step_in_epoch: int) -> str:
    """``ssd-<epoch>_<steps done in that epoch>.ckpt``, MindSpore's and the reference's naming
    (``ssd-500_458.ckpt`` ends epoch 500 of 458 steps; ``ssd-3_17.ckpt`` is 17 steps into
    epoch 3, written when a run was interrupted)."""
    return f"{CHECKPOINT_PREFIX}-{epoch}_{step_in_epoch}.ckpt"


def save_checkpoint(cell, path: str, extra: Optional[dict] = None) -> str:
    """Save all parameters of ``cell`` (plus ``extra`` scalars) to ``path`` atomically.

    MindSpore writes the file in a private hidden folder next to ``path`` (``atomic_path``'s
    ``private``: its own ``.tmp`` file goes there too), which is renamed onto ``path`` once
    complete and removed with whatever is in it on any error, so a crash or a full disk never
    leaves a truncated file under a checkpoint's name nor a partial one taking the disk's
    space. The file is read-only (as MindSpore makes it) for everyone the umask lets read it.
    """
    try:
        with atomic_path(path, private=True) as tmp:
            ms.save_checkpoint(cell, tmp, append_dict=dict(extra or {}))
    except WriteError as exc:
        cause = describe_write_error(path, exc.cause, "checkpoint ") if exc.cause else str(exc)
        raise CheckpointError(f"{cause}. The checkpoints already written are kept as they were "
                              "(--resume auto continues from the newest)") from exc
    except RuntimeError as exc:
        raise CheckpointError(f"cannot write checkpoint {path} ({exc}); a full disk? The "
                              "checkpoints already written are kept as they were") from exc
    return path


def list_checkpoints(folder: str) -> list:
    """Complete checkpoints of a run folder, oldest first (temporary files never match)."""
    found = []
    for path in glob.glob(os.path.join(folder, f"{CHECKPOINT_PREFIX}-*.ckpt")):
        match = _NAME.match(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return [path for _, _, path in sorted(found)]


def prune_checkpoints(folder: str, keep: int) -> list:
    """Delete all but the newest ``keep`` checkpoints; returns the deleted paths."""
    old = list_checkpoints(folder)[:-keep] if keep > 0 else []
    for path in old:
        os.remove(path)
    return old


def read_state(params: dict, path: str) -> dict:
    """The training position stored with a checkpoint's parameters (ints)."""
    missing = [key for key in STATE_KEYS if STATE_PREFIX + key not in params]
    if missing:
        raise CheckpointError(f"{path} has no training state ({', '.join(missing)} missing): "
                              "it cannot be resumed (use --pre_trained to start from its "
                              "weights)")
    return {key: int(np.asarray(params[STATE_PREFIX + key].asnumpy()).ravel()[0])
            for key in STATE_KEYS}


@dataclass
class Position:
    """Where training stands: ``step_in_epoch`` steps of ``epoch`` are done (1-based epochs;
    a finished epoch has step_in_epoch == steps_per_epoch)."""

    epoch: int
    step_in_epoch: int
    global_step: int

    def next_start(self, steps_per_epoch: int) -> tuple:
        """(epoch to run next, batches of it already done)."""
        if self.step_in_epoch >= steps_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.step_in_epoch


def find_resume_checkpoint(resume: str, output_dir: str) -> Optional[str]:
    """The checkpoint --resume names: 'auto' = newest complete one in the run folder (None if
    there is none yet), else the given path."""
    if resume != "auto":
        if not os.path.isfile(resume):
            raise CheckpointError(f"--resume {resume}: no such checkpoint")
        return resume
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


RESUME_ADVICE = ("Resume with the settings it was trained with ({flags}), or start from its "
                 "weights with --pre_trained")


def restore(train_step, path: str, steps_per_epoch: int, config: Config) -> "Position":
    """Load a training checkpoint into the train step; returns its Position. Refused when it
    was written with another step count per epoch or other default boxes than ``config``'s."""
    params = read_checkpoint(path)
    state = read_state(params, path)
    check_default_boxes(params, config, path, RESUME_ADVICE)
    if state.get("steps_per_epoch") not in (None, steps_per_epoch):
        raise CheckpointError(f"{path} was written with {state['steps_per_epoch']} steps per "
                              f"epoch, this run has {steps_per_epoch}: same data and batch size "
                              "are needed to resume")
    own = {p.name: p for p in train_step.get_parameters()}
    missing = sorted(name for name in own if name not in params)
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} tensors of this model and optimizer "
                              f"({listed(missing)}): it is not a training checkpoint of this "
                              "configuration")
    wrong = [f"{name} {tuple(params[name].shape)} (this run: {tuple(p.shape)})"
             for name, p in own.items() if tuple(params[name].shape) != tuple(p.shape)]
    if wrong:
        raise CheckpointError(f"{path} does not fit this run's model: {len(wrong)} tensors have "
                              f"other shapes, {listed(wrong, 3)}; another class count or model "
                              "settings? Resume with the settings it was trained with, or start "
                              "from its weights with --pre_trained (--filter_weight true for "
                              "another class count)")
    ms.load_param_into_net(train_step, {name: params[name] for name in own}, strict_load=True)
    return Position(state["epoch"], state["step_in_epoch"], state["global_step"])
