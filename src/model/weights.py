"""Weights from checkpoint files into a detector: read with a clear error, matched by name
whatever wraps the network, with a report of what loaded.

Names follow the reference (``feature_extractor.module.layer1.0.conv1.weight``,
``multi_box.multi_cls_layers.0.3.bias`` ...), so its checkpoints load too.
"""
import json
import os
from typing import Optional

import mindspore as ms

from src.anchors import box_differences, box_flags
from src.config import Config
from src.model.ssd import HEAD_NAMES
from src.text import listed

WRAPPER_PREFIX = "network."
STATE_PREFIX = "train_state."   # the optimizer already has a parameter named global_step
DEFAULT_BOXES = STATE_PREFIX + "default_boxes"   # JSON of src.anchors.box_settings


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and why."""


def read_checkpoint(path):
    """Parameter dict of a checkpoint file, with a clear error if it cannot be read."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc


def check_default_boxes(params: dict, config: Config, path: str, advice: str) -> None:
    """CheckpointError when the checkpoint's parameters ``params`` store default-box settings
    (``src.anchors.BOX_KEYS``) other than ``config``'s; checkpoints that store none (the
    reference's, ours before they did) pass. ``advice`` ends the message; ``{flags}`` in it
    becomes the flags that set the checkpoint's values."""
    stored = params.get(DEFAULT_BOXES)
    if stored is None:
        return
    try:
        stored = json.loads(str(stored))
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: {DEFAULT_BOXES} is not a JSON mapping of box "
                              "settings; the file is damaged")
    differences = box_differences(stored, config)
    if differences:
        shown = [f"{key} {json.dumps(theirs)} (this run: {json.dumps(ours)})"
                 for key, theirs, ours in differences]
        flags = box_flags({key: theirs for key, theirs, _ in differences})
        raise CheckpointError(f"{path} was trained with other default boxes than this run's: "
                              f"{listed(shown, 7)}. " + advice.format(flags=flags))


def strip_wrappers(name: str) -> str:
    """A parameter's name without the prefixes of the cells wrapped around the detector
    (``network.`` of the loss, train step and inference network): the name it has in a bare
    ``SsdResnet34``, by which checkpoints are matched."""
    while name.startswith(WRAPPER_PREFIX):
        name = name[len(WRAPPER_PREFIX):]
    return name


def load_weights(network: ms.nn.Cell, path: str, drop_heads: bool = False,
                 params: Optional[dict] = None, complete: bool = False) -> tuple:
    """Load a checkpoint's weights into a detector (bare or inside wrappers).

    Names are compared without wrapper prefixes (``network.``), so a training checkpoint loads
    into an inference network and back; optimizer state is ignored.
    With ``drop_heads`` the class and box heads are not loaded (training another class count).
    With ``complete`` every parameter of the network must be in the checkpoint (inference,
    export: a network partly at its random initialisation would give wrong answers silently).

    Returns:
        (number of loaded tensors, names of the network's parameters left at their init).
    Raises:
        CheckpointError if nothing matched, a shape differs (with the parameter named), or with
        ``complete`` some parameter is not in the checkpoint (listed).
    """
    params = read_checkpoint(path) if params is None else params
    own = {strip_wrappers(p.name): p for p in network.get_parameters()}
    wanted = {}
    for name, value in params.items():
        if name.startswith("moments."):
            continue
        short = strip_wrappers(name)
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
    missing = sorted(p.name for p in own.values() if p.name not in wanted)
    if complete and missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {len(missing)} of the network's {len(own)} tensors "
            f"({listed([strip_wrappers(n) for n in missing])}): it is not a complete detector "
            "checkpoint of this configuration (a backbone checkpoint only trains, with "
            "--pre_trained)")
    ms.load_param_into_net(network, wanted, strict_load=True)
    return len(wanted), missing


def copy_weights(source: ms.nn.Cell, target: ms.nn.Cell) -> None:
    """Copy every parameter of ``target`` from the same-named one of ``source`` (names
    compared without wrapper prefixes), e.g. a training network into an inference copy."""
    by_name = {strip_wrappers(p.name): p for p in source.get_parameters()}
    for param in target.get_parameters():
        param.set_data(ms.Tensor(by_name[strip_wrappers(param.name)].asnumpy()))
