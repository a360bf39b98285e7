"""Checkpoints: written atomically, pruned to the newest N, loaded with a report of what matched.

A training checkpoint holds every parameter of the train step: the network's weights and
BatchNorm statistics (``network.*``), the optimizer's moments (``moments.*``), its global step,
and the loss-scale state, plus the epoch and the data-order seed. Names follow the reference
(``network.feature_extractor.module.layer1.0.conv1.weight`` ...), so its checkpoints load too.
"""
import glob
import os
import re

import mindspore as ms

CHECKPOINT_PREFIX = "ssd"
HEAD_NAMES = ("multi_loc_layers", "multi_cls_layers")
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)_(\d+)\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and why."""


def checkpoint_name(epoch, steps_per_epoch):
    """``ssd-<epoch>_<steps_per_epoch>.ckpt``, as the reference names them."""
    return f"{CHECKPOINT_PREFIX}-{epoch}_{steps_per_epoch}.ckpt"


def save_checkpoint(cell, path, extra=None):
    """Save all parameters of ``cell`` (plus ``extra`` scalars) to ``path`` atomically.

    The file is first written under a hidden temporary name in the same folder and renamed once
    complete, so a crash never leaves a truncated file under a checkpoint's name.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    ms.save_checkpoint(cell, tmp, append_dict=dict(extra or {}))
    os.replace(tmp, path)
    return path


def list_checkpoints(folder):
    """Complete checkpoints of a run folder, oldest epoch first."""
    found = []
    for path in glob.glob(os.path.join(folder, f"{CHECKPOINT_PREFIX}-*.ckpt")):
        match = _NAME.match(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def prune_checkpoints(folder, keep):
    """Delete all but the newest ``keep`` epoch checkpoints; returns the deleted paths."""
    old = list_checkpoints(folder)[:-keep] if keep > 0 else []
    for path in old:
        os.remove(path)
    return old


def read_checkpoint(path):
    """Parameter dict of a checkpoint file, with a clear error if it cannot be read."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc


def _strip(name, prefix="network."):
    while name.startswith(prefix):
        name = name[len(prefix):]
    return name


def load_weights(network, path, drop_heads=False):
    """Load a checkpoint's weights into a detector (bare or inside wrappers).

    Names are compared without wrapper prefixes (``network.``), so a training checkpoint loads
    into an inference network and back; optimizer state is ignored.
    With ``drop_heads`` the class and box heads are not loaded (training another class count).

    Returns:
        (number of loaded tensors, names of the network's parameters left at their init).
    Raises:
        CheckpointError if nothing matched or a shape differs (with the parameter named).
    """
    params = read_checkpoint(path)
    own = {_strip(p.name): p for p in network.get_parameters()}
    wanted = {}
    for name, value in params.items():
        if name.startswith("moments."):
            continue
        short = _strip(name)
        if short not in own:
            continue
        if drop_heads and any(head in short for head in HEAD_NAMES):
            continue
        if tuple(value.shape) != tuple(own[short].shape):
            hint = (" (a different class count? pass --num_classes to match, or --filter_weight "
                    "to drop the heads)" if any(h in short for h in HEAD_NAMES) else "")
            raise CheckpointError(f"checkpoint {path}: {short} has shape {tuple(value.shape)}, "
                                  f"the network expects {tuple(own[short].shape)}{hint}")
        wanted[own[short].name] = value
    if not wanted:
        raise CheckpointError(f"checkpoint {path}: none of its {len(params)} tensors matches a "
                              "parameter of SSD-ResNet34")
    ms.load_param_into_net(network, wanted, strict_load=True)
    missing = sorted(p.name for p in own.values() if p.name not in wanted)
    return len(wanted), missing
