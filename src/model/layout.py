"""Where activations live between our CPU layers: NCHW, or oneDNN's blocked layout.

Blocked (``aBcd16b`` or ``aBcd8b``): a (N, C, H, W) tensor stored as (N, C/B, H, W, B), channels
a multiple of the block B; same shape and size to MindSpore, only the order of the values
differs. B is the vector width (in floats) of the ISA oneDNN runs, the layout its convolutions
read and write: 16 with AVX-512, 8 with AVX2 (``src.cpu.CpuInfo.block``; docs/performance.md
measures both). So when one of our convolutions hands its output to our BatchNorm and that to
the next convolution, nothing is reordered in between. Only our kernels and elementwise ops
(ReLU, add) may touch a blocked tensor; the model marks which layers live in the blocked region
(``blocked_input`` / ``blocked_output`` / ``blocked``: the backbone from the stem
convolution's output on, which enters the region itself; feature maps, extra blocks and heads
wherever the channel count allows, ``blockable``). ``ToBlocked`` enters it from an NCHW
tensor.
"""
from mindspore import nn

from src.device import kernel_op

BLOCKS = (8, 16)
PLAIN = 0  # the block value of NCHW: not blocked
REORDERS = {16: ("ToBlocked", "ToPlain"), 8: ("ToBlocked8", "ToPlain8")}


def blockable(channels, block):
    """Whether a tensor of this many channels can live in the blocked layout of ``block``
    channels (never for PLAIN). The model keeps a tensor blocked exactly when it can, so
    producers and consumers agree."""
    return block != PLAIN and channels % block == 0


def check_blockable(channels, block, what):
    """Refuse a layer asked to be blocked (``block`` 8 or 16) that cannot be."""
    if block == PLAIN:
        return
    if block not in BLOCKS:
        raise ValueError(f"block {block!r}: expected {PLAIN} (NCHW) or one of {BLOCKS}")
    if channels % block:
        raise ValueError(f"a blocked {what} needs channels divisible by {block}, got {channels}")


def _reorder(function, bprop=None):
    return kernel_op(function, lambda x: x, lambda x: x, bprop)


class ToBlocked(nn.Cell):
    """(N, C, H, W) NCHW -> the same values in the blocked layout of ``block`` channels (its
    gradient goes back to NCHW); the identity for PLAIN (the network keeps NCHW throughout)."""

    def __init__(self, channels, block):
        super().__init__()
        check_blockable(channels, block, "tensor")
        self.enabled = block != PLAIN
        if self.enabled:
            to_blocked, to_plain = REORDERS[block]
            plain = _reorder(to_plain)

            def bprop(x, out, dout):
                return (plain(dout),)

            self.reorder = _reorder(to_blocked, bprop)

    def construct(self, x):
        if self.enabled:
            return self.reorder(x)
        return x
