"""Truncated ResNet-34 backbone of SSD-ResNet34 (spec section 1).

Stem, layer1, layer2 and layer3 only; layer3 keeps stride 1, so a (B, 3, 300, 300) image gives
one (B, 256, 38, 38) feature map. The max-pool pads TF-style ("same": nothing before, one row and
column after), which is not PyTorch's symmetric padding. Attribute names follow the reference so
its checkpoints load (``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``down_sample_layer``).
"""
from mindspore import nn

from src.model.batch_norm import batch_norm
from src.model.conv import Conv2d, layout_block
from src.model.max_pool import max_pool_same

BLOCKED = {"blocked_input": True, "blocked_output": True}  # a layer inside the blocked region


def conv3x3(in_channels, out_channels, stride=1):
    return Conv2d(in_channels, out_channels, 3, stride, pad_mode="pad", padding=1, **BLOCKED)


class BasicBlock(nn.Cell):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU.

    The shortcut is a 1x1 conv + BN when the stride or the channel count changes. The ReLUs and
    the add belong to the BatchNorm before them (``BatchNormAct2d``: one op on CPU). BatchNorm
    here: eps 1e-5, running = 0.9 * running + 0.1 * batch.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = batch_norm(out_channels, activation="relu", blocked=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = batch_norm(out_channels, activation="relu", blocked=True, residual=True)
        self.down_sample = stride != 1 or in_channels != out_channels
        self.down_sample_layer = None
        if self.down_sample:
            self.down_sample_layer = nn.SequentialCell([
                Conv2d(in_channels, out_channels, 1, stride, pad_mode="valid", **BLOCKED),
                batch_norm(out_channels, blocked=True)])

    def construct(self, x):
        identity = x
        if self.down_sample:
            identity = self.down_sample_layer(x)
        out = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(out), identity)


def make_layer(blocks, in_channels, out_channels, stride):
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(1, blocks)]
    return nn.SequentialCell(layers)


class ResNet34Backbone(nn.Cell):
    """(B, 3, H, W) image -> (B, 256, H/8, W/8) feature map (38x38 for 300x300).

    When the network keeps blocked layouts (``src.model.layout``), activations are blocked from
    the stem convolution's output on (it reads the NCHW image), the max-pool included (ours,
    ``src.model.max_pool``); otherwise everything is NCHW and the max-pool MindSpore's.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = Conv2d(3, 64, 7, 2, pad_mode="pad", padding=3, input_grad=False,
                            blocked_output=True)
        self.bn1 = batch_norm(64, activation="relu", blocked=True)
        self.maxpool = max_pool_same(64, 3, 2, layout_block())
        self.layer1 = make_layer(3, 64, 64, 1)
        self.layer2 = make_layer(4, 64, 128, 2)
        self.layer3 = make_layer(6, 128, 256, 1)

    def construct(self, x):
        x = self.maxpool(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))
