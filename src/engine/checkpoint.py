"""Checkpoints: written atomically, pruned to the newest N, loaded with a report of what matched.

A training checkpoint holds every parameter of the train step: the network's weights and
BatchNorm statistics (``network.*``), the optimizer's moments (``moments.*``), its global step,
and the loss-scale state, plus the epoch and the data-order seed. Names follow the reference
(``network.feature_extractor.module.layer1.0.conv1.weight`` ...), so its checkpoints load too.
"""
import glob
import json
import os
import re

import numpy as np
import mindspore as ms

CHECKPOINT_PREFIX = "ssd"
HEAD_NAMES = ("multi_loc_layers", "multi_cls_layers")
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)_(\d+)\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and why."""


STATE_KEYS = ("epoch", "step_in_epoch", "global_step", "seed", "steps_per_epoch")
STATE_PREFIX = "train_state."   # the optimizer already has a parameter named global_step


def checkpoint_name(epoch, step_in_epoch):
    """``ssd-<epoch>_<steps done in that epoch>.ckpt``, MindSpore's and the reference's naming
    (``ssd-500_458.ckpt`` ends epoch 500 of 458 steps; ``ssd-3_17.ckpt`` is 17 steps into
    epoch 3, written when a run was interrupted)."""
    return f"{CHECKPOINT_PREFIX}-{epoch}_{step_in_epoch}.ckpt"


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
    """Complete checkpoints of a run folder, oldest first (temporary files never match)."""
    found = []
    for path in glob.glob(os.path.join(folder, f"{CHECKPOINT_PREFIX}-*.ckpt")):
        match = _NAME.match(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return [path for _, _, path in sorted(found)]


def prune_checkpoints(folder, keep):
    """Delete all but the newest ``keep`` checkpoints; returns the deleted paths."""
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


def read_state(params, path):
    """The training position stored with a checkpoint's parameters (ints)."""
    missing = [key for key in STATE_KEYS if STATE_PREFIX + key not in params]
    if missing:
        raise CheckpointError(f"{path} has no training state ({', '.join(missing)} missing): "
                              "it cannot be resumed (use --pre_trained to start from its "
                              "weights)")
    return {key: int(np.asarray(params[STATE_PREFIX + key].asnumpy()).ravel()[0])
            for key in STATE_KEYS}


def state_entries(**state):
    """append_dict entries of a training checkpoint: the position (ints) and class names."""
    entries = {STATE_PREFIX + key: int(state[key]) for key in STATE_KEYS}
    entries[STATE_PREFIX + "class_names"] = json.dumps(list(state["class_names"]))
    return entries


CLASS_HEAD_BIAS = "multi_box.multi_cls_layers.0.3.bias"  # (boxes per cell of map 0 x classes,)


def with_checkpoint_classes(config, path, log=print):
    """``config`` with ``num_classes`` read from a detector checkpoint when it was not given
    (0): its stored class names, else its first class head's width / boxes per cell."""
    if config.num_classes:
        return config
    names = read_class_names(path)
    count = len(names) if names else None
    if count is None:
        try:
            found = ms.load_checkpoint(path, choice_func=lambda n: n.endswith(CLASS_HEAD_BIAS))
        except (ValueError, RuntimeError, OSError) as exc:
            raise CheckpointError(f"{path}: cannot be read as a MindSpore checkpoint ({exc})") \
                from exc
        head = next(iter(found.values()), None)
        if head is None:
            return config.replace(num_classes=config.class_count)
        count = int(head.shape[0]) // int(config.num_default[0])
    log(f"num_classes {count}: from the checkpoint {path}")
    return config.replace(num_classes=count)


def read_class_names(path):
    """Class names a training checkpoint stores (tuple), or None."""
    found = {}
    try:
        found = ms.load_checkpoint(path, choice_func=lambda n: n == STATE_PREFIX + "class_names")
    except (ValueError, RuntimeError, OSError):
        return None
    value = found.get(STATE_PREFIX + "class_names")
    if value is None:
        return None
    try:
        return tuple(json.loads(str(value)))
    except (TypeError, ValueError):
        return None


def load_weights(network, path, drop_heads=False, params=None):
    """Load a checkpoint's weights into a detector (bare or inside wrappers).

    Names are compared without wrapper prefixes (``network.``), so a training checkpoint loads
    into an inference network and back; optimizer state is ignored.
    With ``drop_heads`` the class and box heads are not loaded (training another class count).

    Returns:
        (number of loaded tensors, names of the network's parameters left at their init).
    Raises:
        CheckpointError if nothing matched or a shape differs (with the parameter named).
    """
    params = read_checkpoint(path) if params is None else params
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


BACKBONE_PREFIX = "feature_extractor.module."
_BACKBONE_NAME = re.compile(r"(?:^|\.)((?:conv1|bn1|layer[1-4]\.\d+\.\S+|fc)\.?\S*)$")
_PARAMETER_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                    "running_var": "moving_variance"}


def backbone_name(name):
    """Our backbone parameter name for a classification ResNet's parameter name, or None.

    Accepts torchvision-style names (``layer1.0.bn1.weight``, ``downsample``, ``running_var``)
    and MindSpore-style names (``bn1.gamma``, ``down_sample_layer``, ``moving_variance``), with
    any prefix (``backbone.``, ``network.resnet.`` ...).
    """
    match = _BACKBONE_NAME.search(name)
    if not match:
        return None
    short = match.group(1).replace(".downsample.", ".down_sample_layer.")
    parts = short.split(".")
    is_bn = (parts[0] == "bn1" or (len(parts) > 3 and parts[2].startswith("bn"))
             or (len(parts) > 4 and parts[2] == "down_sample_layer" and parts[3] == "1"))
    if is_bn and parts[-1] in _PARAMETER_NAMES:
        parts[-1] = _PARAMETER_NAMES[parts[-1]]
    return BACKBONE_PREFIX + ".".join(parts)


def load_backbone(network, path, params=None):
    """Load an ImageNet-style ResNet-34 checkpoint into the detector's backbone.

    Returns (loaded names, {checkpoint name: why skipped}); raises CheckpointError when nothing
    matched or a shape differs.
    """
    params = read_checkpoint(path) if params is None else params
    own = {_strip(p.name): p for p in network.get_parameters()}
    wanted, skipped = {}, {}
    for name, value in params.items():
        target = backbone_name(name)
        if target is None:
            skipped[name] = "not a ResNet backbone parameter"
        elif target.startswith(BACKBONE_PREFIX + "layer4") or target.startswith(
                BACKBONE_PREFIX + "fc"):
            skipped[name] = "layer4 and fc are not part of SSD-ResNet34's truncated backbone"
        elif target not in own:
            skipped[name] = f"no parameter {target} in the detector"
        elif tuple(value.shape) != tuple(own[target].shape):
            raise CheckpointError(f"checkpoint {path}: {name} has shape {tuple(value.shape)}, "
                                  f"{target} expects {tuple(own[target].shape)}: is this a "
                                  "ResNet-34?")
        else:
            wanted[own[target].name] = value
    if not wanted:
        raise CheckpointError(f"checkpoint {path}: none of its {len(params)} tensors maps onto "
                              "the ResNet-34 backbone (expected names like conv1.weight, "
                              "layer1.0.conv1.weight)")
    ms.load_param_into_net(network, wanted, strict_load=True)
    return sorted(wanted), skipped


def is_backbone_checkpoint(params):
    """Whether checkpoint parameters are a classification backbone rather than a detector."""
    return not any("multi_box" in n or "feature_extractor" in n for n in params)
