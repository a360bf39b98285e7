"""Pretrained weights for training (--pre_trained): a detector checkpoint (ours or the
reference's), or an ImageNet ResNet-34 classification checkpoint mapped onto the detector's
truncated backbone by parameter name, in any format of ``src.model.weight_formats``
(torchvision's .pth, timm's .safetensors, mindcv's and MindSpore's .ckpt).
"""
import os
import re
from typing import Callable, Optional

import mindspore as ms
import numpy as np

from src.config import Config
from src.files import atomic_path
from src.model.weight_formats import read_weights
from src.model.weights import CheckpointError, load_weights, strip_wrappers

BACKBONE_PREFIX = "feature_extractor.module."
_BACKBONE_NAME = re.compile(
    r"(?:^|\.)((?:conv1|bn1|layer[1-4]\.\d+\.\S+|fc|classifier)\.?\S*)$")
_NOT_OURS = ("layer4", "fc", "classifier")    # ResNet-34's parts that SSD's backbone drops
_PARAMETER_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                    "running_var": "moving_variance"}


def backbone_name(name: str) -> Optional[str]:
    """Our backbone parameter name for a classification ResNet's parameter name, or None.

    Accepts torchvision's and timm's names (``layer1.0.bn1.weight``, ``downsample``,
    ``running_var``), mindcv's (``bn1.gamma``, ``down_sample``, ``moving_variance``,
    ``classifier``) and the reference's (``down_sample_layer``), with any prefix
    (``backbone.``, ``network.resnet.`` ...).
    """
    match = _BACKBONE_NAME.search(name)
    if not match:
        return None
    short = match.group(1).replace(".downsample.", ".down_sample_layer.").replace(
        ".down_sample.", ".down_sample_layer.")
    parts = short.split(".")
    is_bn = (parts[0] == "bn1" or (len(parts) > 3 and parts[2].startswith("bn"))
             or (len(parts) > 4 and parts[2] == "down_sample_layer" and parts[3] == "1"))
    if is_bn and parts[-1] in _PARAMETER_NAMES:
        parts[-1] = _PARAMETER_NAMES[parts[-1]]
    return BACKBONE_PREFIX + ".".join(parts)


def map_backbone(network, path: str, params: dict) -> tuple:
    """({detector parameter name: float32 array}, {file's name: why skipped}) of a ResNet-34
    classification checkpoint's tensors; raises CheckpointError when nothing matched or a
    shape differs."""
    own = {strip_wrappers(p.name): p for p in network.get_parameters()}
    wanted, skipped = {}, {}
    for name, value in params.items():
        target = backbone_name(name)
        if target is None:
            skipped[name] = "not a ResNet backbone parameter"
        elif target.startswith(tuple(BACKBONE_PREFIX + part for part in _NOT_OURS)):
            skipped[name] = ("layer4 and the classifier are not part of SSD-ResNet34's "
                             "truncated backbone")
        elif target not in own:
            skipped[name] = f"no parameter {target} in the detector"
        elif tuple(value.shape) != tuple(own[target].shape):
            raise CheckpointError(f"checkpoint {path}: {name} has shape {tuple(value.shape)}, "
                                  f"{target} expects {tuple(own[target].shape)}: is this a "
                                  "ResNet-34?")
        else:
            wanted[own[target].name] = np.asarray(
                value.asnumpy() if isinstance(value, ms.Tensor) else value, np.float32)
    if not wanted:
        raise CheckpointError(f"checkpoint {path}: none of its {len(params)} tensors maps onto "
                              "the ResNet-34 backbone (expected names like conv1.weight, "
                              "layer1.0.conv1.weight)")
    return wanted, skipped


def load_backbone(network, path: str, params: Optional[dict] = None) -> tuple:
    """Load an ImageNet ResNet-34 checkpoint (any format of ``read_weights``) into the
    detector's backbone. Returns (loaded names, {checkpoint name: why skipped})."""
    params = read_weights(path)[1] if params is None else params
    wanted, skipped = map_backbone(network, path, params)
    ms.load_param_into_net(network, {n: ms.Parameter(ms.Tensor(v), name=n)
                                     for n, v in wanted.items()}, strict_load=True)
    return sorted(wanted), skipped


def convert_backbone(network, path: str, output: str) -> tuple:
    """Write the backbone tensors of a ResNet-34 checkpoint (any format) as a MindSpore
    checkpoint under the detector's (the reference's) names, for --pre_trained here or in the
    reference's scripts. Refuses to replace an existing file; written atomically.
    Returns (written names, {checkpoint name: why skipped})."""
    if os.path.exists(output):
        raise CheckpointError(f"{output} exists: not replaced (choose another --output)")
    wanted, skipped = map_backbone(network, path, read_weights(path)[1])
    with atomic_path(output) as tmp:
        ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in sorted(wanted.items())],
                           tmp)
    return sorted(wanted), skipped


def is_backbone_checkpoint(params: dict) -> bool:
    """Whether checkpoint parameters are a classification backbone rather than a detector."""
    return not any("multi_box" in n or "feature_extractor" in n for n in params)


def load_pretrained(config: Config, network, say: Callable = print) -> None:
    """--pre_trained: a detector checkpoint (heads dropped with --filter_weight) or an
    ImageNet-style ResNet-34 backbone checkpoint; prints what was loaded and skipped."""
    path = config.pre_trained
    kind, params = read_weights(path)
    if kind != "mindspore" or is_backbone_checkpoint(params):
        loaded, skipped = load_backbone(network, path, params)
        say(f"Backbone checkpoint {path} ({kind}): loaded {len(loaded)} tensors into the "
            f"ResNet-34 backbone; skipped {len(skipped)}:")
        for name, why in sorted(skipped.items()):
            say(f"  {name}: {why}")
        return
    loaded, left = load_weights(network, path, config.filter_weight, params)
    reason = " (heads dropped by --filter_weight)" if config.filter_weight else ""
    say(f"Loaded {loaded} tensors from {path}; {len(left)} keep their initial values{reason}")
