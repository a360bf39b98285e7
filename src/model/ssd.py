"""SSD-ResNet34 detector (spec sections 2-3): backbone, five extra blocks, six pairs of heads.

Shapes for a (B, 3, 300, 300) input: feature maps 256x38x38, 512x19x19, 512x10x10, 256x5x5,
256x3x3, 256x1x1; outputs ``loc`` (B, 8732, 4) box offsets and ``cls`` (B, 8732, num_classes)
logits in training mode, sigmoid scores in eval mode (column 0 is background). Attribute names
follow the reference (``feature_extractor.module``, ``feature_extractor.additional_blocks``,
``multi_box.multi_loc_layers`` / ``multi_cls_layers``) so the reference's checkpoints load.
"""
import math
from typing import Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer

from src.config import Config
from src.model.layers import Layers
from src.model.onednn_conv import OneDnnConv2d
from src.model.resnet34 import ResNet34Backbone

EXTRAS_MID_CHANNELS = (256, 256, 128, 128, 128)
INIT_SIGMA = 0.02
BACKGROUND_CLASS = 0  # class index of the class head's background column


def layouts(layers: Layers, in_channels: int, out_channels: int) -> dict:
    """A convolution's input and output blocked wherever their channels allow."""
    return {"blocked_input": layers.blockable(in_channels),
            "blocked_output": layers.blockable(out_channels)}


class SSDFeatureExtractor(nn.Cell):
    """Backbone map plus five extra blocks (1x1 conv, ReLU, 3x3 conv, ReLU; no BN, no bias).

    The 3x3 conv of extra block i has stride ``strides[min(i + 2, 5)]`` (the reference reads
    entries 2..5 of its six strides), padding 1 when it downsamples and none ("valid") otherwise.
    """

    def __init__(self, layers: Layers, out_channels: Sequence[int] = (256, 512, 512, 256, 256, 256),
                 strides: Sequence[int] = (1, 1, 2, 2, 2, 1)):
        super().__init__()
        self.module = ResNet34Backbone(layers)
        blocks = []
        for i, mid in enumerate(EXTRAS_MID_CHANNELS):
            stride = strides[min(i + 2, len(strides) - 1)]
            padding = {"pad_mode": "pad", "padding": 1} if stride > 1 else {"pad_mode": "valid"}
            blocks.append(nn.SequentialCell([
                layers.conv2d(out_channels[i], mid, 1, **layouts(layers, out_channels[i], mid)),
                nn.ReLU(),
                layers.conv2d(mid, out_channels[i + 1], 3, stride, **padding,
                              **layouts(layers, mid, out_channels[i + 1])),
                nn.ReLU()]))
        self.additional_blocks = nn.CellList(blocks)

    def construct(self, x):
        feature = self.module(x)
        features: tuple = (feature,)
        for block in self.additional_blocks:
            feature = block(feature)
            features += (feature,)
        return features


def separable_head(layers: Layers, channels: int, outputs: int) -> nn.SequentialCell:
    """Depthwise 3x3 -> BN (eps 1e-3, momentum 0.97) -> ReLU6 -> pointwise 1x1 with bias.
    Reads the feature map blocked when it can be (``src.model.layout``), gives NHWC with our
    convolutions (``layers.ours``), NCHW with MindSpore's."""
    return nn.SequentialCell([
        layers.conv2d(channels, channels, 3, 1, pad_mode="same", group=channels,
                      **layouts(layers, channels, channels)),
        layers.batch_norm(channels, eps=1e-3, momentum=0.97, blocked=layers.blockable(channels)),
        nn.ReLU6(),
        layers.conv2d(channels, outputs, 1, has_bias=True, bias_init="zeros",
                      blocked_input=layers.blockable(channels), nhwc_output=True)])


# Parameter names of the heads (the reference's), read by checkpoint code without building a
# network: every head parameter has one of HEAD_NAMES in its name; CLASS_HEAD_BIAS ends the
# name of the first class head's pointwise bias, (boxes per cell of map 0 x classes,), from
# which a checkpoint's class count is read. tests/test_model.py checks them on a built model.
HEAD_NAMES = ("multi_loc_layers", "multi_cls_layers")
CLASS_HEAD_BIAS = "multi_box.multi_cls_layers.0.3.bias"


class MultiBox(nn.Cell):
    """Box and class heads on every feature map, flattened location-major and concatenated.

    Box index ``start_k + (y * W_k + x) * n_k + d`` matches ``src.anchors``.
    """

    def __init__(self, layers: Layers, num_classes: int, out_channels: Sequence[int],
                 num_default: Sequence[int], num_boxes: int):
        super().__init__()
        self.num_boxes = num_boxes
        self.nhwc = layers.ours  # our heads' outputs are (B, H, W, n * k) already
        self.multi_loc_layers = nn.CellList(
            [separable_head(layers, c, 4 * n) for c, n in zip(out_channels, num_default)])
        self.multi_cls_layers = nn.CellList(
            [separable_head(layers, c, num_classes * n)
             for c, n in zip(out_channels, num_default)])

    def flatten(self, outputs):
        batch = outputs[0].shape[0]
        if self.nhwc:
            flat = [ops.reshape(x, (batch, -1)) for x in outputs]
        else:
            flat = [ops.reshape(ops.transpose(x, (0, 2, 3, 1)), (batch, -1)) for x in outputs]
        return ops.reshape(ops.concat(flat, axis=1), (batch, self.num_boxes, -1))

    def construct(self, features):
        loc: tuple = ()
        cls: tuple = ()
        for i, feature in enumerate(features):
            loc += (self.multi_loc_layers[i](feature),)
            cls += (self.multi_cls_layers[i](feature),)
        return self.flatten(loc), self.flatten(cls)


class SsdResnet34(nn.Cell):
    """(B, 3, 300, 300) normalised image -> loc (B, A, 4), cls (B, A, num_classes), float32.

    ``layers`` (default: MindSpore's) says which kernels every layer runs; the network keeps
    it as ``self.layers``."""

    def __init__(self, num_classes: int = 81,
                 extras_out_channels: Sequence[int] = (256, 512, 512, 256, 256, 256),
                 extras_strides: Sequence[int] = (1, 1, 2, 2, 2, 1),
                 num_default: Sequence[int] = (4, 6, 6, 6, 4, 4), num_boxes: int = 8732,
                 layers: Optional[Layers] = None):
        super().__init__()
        self.layers = layers or Layers()
        self.feature_extractor = SSDFeatureExtractor(self.layers, extras_out_channels,
                                                     extras_strides)
        self.multi_box = MultiBox(self.layers, num_classes, extras_out_channels, num_default,
                                  num_boxes)

    def construct(self, x):
        loc, cls = self.multi_box(self.feature_extractor(x))
        if not self.training:
            cls = ops.sigmoid(cls)
        return ops.cast(loc, ms.float32), ops.cast(cls, ms.float32)


def init_weights(network, sigma=INIT_SIGMA):
    """Truncated normal (mean 0, sigma, cut at +-2 sigma) for every trainable parameter whose
    name has none of beta, gamma, bias (all conv kernels); BN and biases keep their init."""
    for param in network.trainable_params():
        if not any(word in param.name for word in ("beta", "gamma", "bias")):
            param.set_data(initializer(TruncatedNormal(sigma, a=-2 * sigma, b=2 * sigma),
                                       param.shape, param.dtype))


def set_class_prior(network: "SsdResnet34", prior: float, num_classes: int) -> None:
    """Start every anchor as background with probability ``1 - prior`` (RetinaNet's prior,
    adapted to the background column of the reference's focal loss): class-head biases
    ``log(prior / (1 - prior))`` on the object classes and the opposite on class 0. A prior of
    0 leaves the reference's zero biases (every sigmoid score 0.5 at the start)."""
    if not prior:
        return
    logit = math.log(prior / (1.0 - prior))
    for head in network.multi_box.multi_cls_layers:
        bias = head[-1].bias
        values = np.full(bias.shape, logit, np.float32)
        values[BACKGROUND_CLASS::num_classes] = -logit  # channel d * num_classes + class
        bias.set_data(ms.Tensor(values))


def freeze_batch_norm(network):
    """Make every BatchNorm normalise with its running statistics, in training too (and stop
    updating them); gamma and beta still train. Returns the number of layers changed."""
    layers = [cell for _, cell in network.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]
    for cell in layers:
        cell.use_batch_statistics = False
    return len(layers)


def conv_description(network: nn.Cell) -> str:
    """'oneDNN (ours)' (with the compute dtype when not float32 and how many layers resolved
    their algorithm to Winograd, when any) or "MindSpore's": which convolutions a detector
    (``SsdResnet34``, bare or wrapped) was built with."""
    detector = next(cell for _, cell in network.cells_and_names() if isinstance(cell, SsdResnet34))
    if not detector.layers.ours:
        return "MindSpore's"
    ours = [cell for _, cell in detector.cells_and_names() if isinstance(cell, OneDnnConv2d)]
    winograd = sum(cell.algorithm == "winograd" for cell in ours)
    return "oneDNN (ours)" + ("" if detector.layers.dtype == "float32" else
                              ", bfloat16 compute") + (
        f", Winograd in {winograd} of {len(ours)} layers" if winograd else "")


def count_trainable_params(network: nn.Cell) -> int:
    return int(sum(int(np.prod(p.shape)) for p in network.trainable_params()))


def build_ssd(config: Config, layers: Optional[Layers] = None) -> SsdResnet34:
    """The detector a Config describes, with the reference's initialisation.

    ``layers``: which kernels it runs (default: ``Layers.from_config`` on the device MindSpore
    is set to); parameters are the same (float32) either way.
    """
    layers = layers or Layers.from_config(config, ms.get_context("device_target"))
    network = SsdResnet34(config.class_count, config.extras_out_channels, config.extras_strides,
                          config.num_default, config.num_ssd_boxes, layers)
    init_weights(network)
    set_class_prior(network, config.cls_bias_prior, config.class_count)
    return network
