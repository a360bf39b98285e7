"""Pretrained weights for training (--pre_trained): a detector checkpoint (ours or the
reference's), or an ImageNet-style ResNet-34 classification checkpoint mapped onto the
detector's truncated backbone by parameter name.
"""
import re
from typing import Callable, Optional

import mindspore as ms

from src.model.weights import CheckpointError, load_weights, read_checkpoint, strip_wrappers

BACKBONE_PREFIX = "feature_extractor.module."
_BACKBONE_NAME = re.compile(r"(?:^|\.)((?:conv1|bn1|layer[1-4]\.\d+\.\S+|fc)\.?\S*)$")
_PARAMETER_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                    "running_var": "moving_variance"}


def backbone_name(name: str) -> Optional[str]:
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


def load_backbone(network, path: str, params: Optional[dict] = None) -> tuple:
    """Load an ImageNet-style ResNet-34 checkpoint into the detector's backbone.

    Returns (loaded names, {checkpoint name: why skipped}); raises CheckpointError when nothing
    matched or a shape differs.
    """
    params = read_checkpoint(path) if params is None else params
    own = {strip_wrappers(p.name): p for p in network.get_parameters()}
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


def is_backbone_checkpoint(params: dict) -> bool:
    """Whether checkpoint parameters are a classification backbone rather than a detector."""
    return not any("multi_box" in n or "feature_extractor" in n for n in params)


def load_pretrained(config, network, say: Callable = print) -> None:
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
