"""Truncated ResNet-34 backbone of SSD-ResNet34 (spec section 1).

Stem, layer1, layer2 and layer3 only; layer3 keeps stride 1, so a (B, 3, 300, 300) image gives
one (B, 256, 38, 38) feature map. The max-pool pads TF-style ("same": nothing before, one row and
column after), which is not PyTorch's symmetric padding. Attribute names follow the reference so
its checkpoints load (``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``down_sample_layer``).
"""
from typing import Optional

from mindspore import nn

from src.model.layers import Layers

BLOCKED = {"blocked_input": True, "blocked_output": True}  # a layer inside the blocked region


def conv3x3(layers: Layers, in_channels: int, out_channels: int, stride: int = 1) -> nn.Cell:
    return layers.conv2d(in_channels, out_channels, 3, stride, pad_mode="pad", padding=1,
                         **BLOCKED)


class BasicBlock(nn.Cell):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU.

    The shortcut is a 1x1 conv + BN when the stride or the channel count changes. The ReLUs and
    the add belong to the BatchNorm before them (``BatchNormAct2d``: one op on CPU). BatchNorm
    here: eps 1e-5, running = 0.9 * running + 0.1 * batch.
    """

    def __init__(self, layers: Layers, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(layers, in_channels, out_channels, stride)
        self.bn1 = layers.batch_norm(out_channels, activation="relu", blocked=True)
        self.conv2 = conv3x3(layers, out_channels, out_channels)
        self.bn2 = layers.batch_norm(out_channels, activation="relu", blocked=True,
                                     residual=True)
        self.down_sample = stride != 1 or in_channels != out_channels
        self.down_sample_layer = None
        if self.down_sample:
            self.down_sample_layer = nn.SequentialCell([
                layers.conv2d(in_channels, out_channels, 1, stride, pad_mode="valid", **BLOCKED),
                layers.batch_norm(out_channels, blocked=True)])

    def construct(self, x):
        identity = x
        if self.down_sample:
            identity = self.down_sample_layer(x)  # type: ignore[misc]
        out = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(out), identity)


def make_layer(layers: Layers, blocks: int, in_channels: int, out_channels: int,
               stride: int) -> nn.SequentialCell:
    cells = [BasicBlock(layers, in_channels, out_channels, stride)]
    cells += [BasicBlock(layers, out_channels, out_channels) for _ in range(1, blocks)]
    return nn.SequentialCell(cells)


class ResNet34Backbone(nn.Cell):
    """(B, 3, H, W) image -> (B, 256, H/8, W/8) feature map (38x38 for 300x300).

    When the network keeps blocked layouts (``src.model.layout``), activations are blocked from
    the stem convolution's output on (it reads the NCHW image), the max-pool included (ours,
    ``src.model.max_pool``); otherwise everything is NCHW and the max-pool MindSpore's.
    """

    def __init__(self, layers: Optional[Layers] = None):
        super().__init__()
        layers = layers or Layers()
        self.conv1 = layers.conv2d(3, 64, 7, 2, pad_mode="pad", padding=3, input_grad=False,
                                   blocked_output=True)
        self.bn1 = layers.batch_norm(64, activation="relu", blocked=True)
        self.maxpool = layers.max_pool_same(64, 3, 2)
        self.layer1 = make_layer(layers, 3, 64, 64, 1)
        self.layer2 = make_layer(layers, 4, 64, 128, 2)
        self.layer3 = make_layer(layers, 6, 128, 256, 1)

    def construct(self, x):
        x = self.maxpool(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))
