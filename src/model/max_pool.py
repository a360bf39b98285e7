"""Max pooling with TensorFlow's "same" padding (``nn.MaxPool2d(pad_mode='same')``), computed
by our kernel (``src/kernels/max_pool.cc``) on the blocked activation layout, so the stem's
pooling runs vectorised and inside the blocked region instead of on NCHW."""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from src.device import kernel_op
from src.model.layout import PLAIN, check_blockable


def same_output_size(size, stride):
    """Output length of 'same' pooling: ceil(size / stride)."""
    return -(-size // stride)


class BlockedMaxPool2d(nn.Cell):
    """(N, C, H, W) in the blocked layout of ``block`` channels -> (N, C, ceil(H / stride),
    ceil(W / stride)), the same layout; equal to ``nn.MaxPool2d(kernel_size, stride,
    pad_mode='same')`` on the same values in NCHW, gradient included."""

    def __init__(self, channels, kernel_size, stride, block):
        super().__init__()
        check_blockable(channels, block, "max-pool input")
        if block == PLAIN:
            raise ValueError("BlockedMaxPool2d reads the blocked layout: use nn.MaxPool2d for NCHW")
        self.settings = Tensor(np.array([kernel_size, stride, block], np.int32))

        def shape(x, settings):
            return [x[0], x[1], same_output_size(x[2], stride), same_output_size(x[3], stride)]

        backward = kernel_op("MaxPoolBackward", lambda dy, x, y, s: x, lambda dy, x, y, s: x)

        def bprop(x, settings, out, dout):
            return backward(dout, x, out, settings), ms.ops.zeros_like(settings)

        self.forward = kernel_op("MaxPoolForward", shape, lambda x, s: x, bprop)

    def construct(self, x):
        return self.forward(x, self.settings)


def max_pool_same(channels, kernel_size, stride, block):
    """The stem's pooling: ours on the blocked layout of ``block`` channels, MindSpore's for
    PLAIN (NCHW)."""
    if block == PLAIN:
        return nn.MaxPool2d(kernel_size=kernel_size, stride=stride, pad_mode="same")
    return BlockedMaxPool2d(channels, kernel_size, stride, block)
