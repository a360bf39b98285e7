"""Where activations live between our CPU layers: NCHW, or oneDNN's blocked layout.

Blocked (``aBcd16b``): a (N, C, H, W) tensor stored as (N, C/16, H, W, 16), channels a multiple
of 16; same shape and size to MindSpore, only the order of the values differs. It is the layout
oneDNN's AVX-512 convolutions read and write, so when one of our convolutions hands its output
to our BatchNorm and that to the next convolution, nothing is reordered in between (reorders
were ~170 ms of a 2.4 s training step here). Only our kernels and elementwise ops (ReLU, add)
may touch a blocked tensor; the model marks which layers live in the blocked region
(``blocked_input`` / ``blocked_output`` / ``blocked``: the backbone's layers from layer1 on;
feature maps, extra blocks and heads wherever the channel count allows, ``blockable``) and
``ToBlocked`` enters it.
"""
from mindspore import nn

from src.device import kernel_op

BLOCK = 16


def blockable(channels):
    """Whether a tensor of this many channels can live in the blocked layout. The model keeps
    a tensor blocked exactly when it can, so producers and consumers agree."""
    return channels % BLOCK == 0


def check_blockable(channels, blocked, what):
    if blocked and not blockable(channels):
        raise ValueError(f"a blocked {what} needs channels divisible by {BLOCK}, got {channels}")


def _reorder(function, bprop=None):
    return kernel_op(function, lambda x: x, lambda x: x, bprop)


class ToBlocked(nn.Cell):
    """(N, C, H, W) NCHW -> the same values in the blocked layout (its gradient goes back to
    NCHW); the identity when ``enabled`` is False (the network keeps NCHW throughout)."""

    def __init__(self, channels, enabled):
        super().__init__()
        check_blockable(channels, enabled, "tensor")
        self.enabled = enabled
        if enabled:
            to_plain = _reorder("ToPlain")

            def bprop(x, out, dout):
                return (to_plain(dout),)

            self.reorder = _reorder("ToBlocked", bprop)

    def construct(self, x):
        if self.enabled:
            return self.reorder(x)
        return x
