"""A drop-in for ``nn.Conv2d`` on CPU whose convolutions run through oneDNN with blocked layouts
(``src/kernels/onednn_conv.cc``, MindSpore Custom AOT ops with their own backward op).

Same parameters and names as ``nn.Conv2d`` (``weight`` (O, I/groups, kh, kw), ``bias``), so
checkpoints move freely between the two. Padding: 'pad' (symmetric), 'valid', or 'same' for
stride 1 with an odd kernel (all the model needs). Built by ``make`` (``src/kernels/build.sh``);
``library_path()`` tells whether it is there.
"""
import itertools
from typing import NamedTuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from src.cpu import cpu_info
from src.device import KERNEL_LIBRARY as LIBRARY
from src.device import kernel_library_status
from src.device import kernel_op as _custom
from src.model.layout import PLAIN, check_blockable

COMPUTE_DTYPES = ("float32", "bfloat16")  # index = the kernel's compute_bf16 flag
ACTIVATIONS = (None, "relu", "relu6")      # index = the kernel's activation code
ALGORITHMS = ("direct", "winograd")        # index = the kernel's winograd flag
ALGORITHM_CHOICES = ("auto",) + ALGORITHMS  # what ``algorithm`` (and conv_algorithm) takes
# algorithm 'auto': Winograd where both channel counts are at least this (measured faster there
# on AVX2 and AVX-512; at 64 channels it is not: docs/performance.md).
WINOGRAD_MIN_CHANNELS = 128
_constant_layer_ids = itertools.count(1)


def library_path():
    """The kernel library when it is built from the current sources, else None."""
    return LIBRARY if kernel_library_status() == "current" else None


class ConvGeometry(NamedTuple):
    """What a convolution kernel call is told besides its tensors: the int32 geometry tensor
    of ``src/kernels/onednn_conv.cc`` (its ``Geometry``: the same fields in the same
    order; codes as there, see the file's top)."""

    stride_h: int
    stride_w: int
    pad_t: int
    pad_l: int
    pad_b: int
    pad_r: int
    groups: int
    has_bias: int
    bf16: int                  # COMPUTE_DTYPES index
    no_input_grad: int
    src_block: int             # PLAIN (NCHW), 8 or 16
    dst_block: int
    activation: int            # ACTIVATIONS index
    constant_weights_id: int   # 0, or the id of a layer whose weights never change
    residual_sum: int
    dst_nhwc: int
    winograd: int              # ALGORITHMS index

    def as_tensor(self) -> Tensor:
        return Tensor(np.array(self, np.int32))


def conv_output_shape(x, w, geometry: ConvGeometry) -> list:
    """(N, O, OH, OW), or (N, OH, OW, O) for an NHWC output."""
    n, o = x[0], w[0]
    oh = (x[2] + geometry.pad_t + geometry.pad_b - w[2]) // geometry.stride_h + 1
    ow = (x[3] + geometry.pad_l + geometry.pad_r - w[3]) // geometry.stride_w + 1
    return [n, oh, ow, o] if geometry.dst_nhwc else [n, o, oh, ow]


class ConvOps:
    """The Custom ops of one convolution geometry (stride, padding, groups, bias, compute
    dtype). Forward gives (y, x_blocked): x_blocked is x as the kernel read it, passed back to
    the backward op (dx, dw[, db] in one op, the forward's bprop) to spare a second reorder."""

    def __init__(self, geometry: ConvGeometry):
        self.geometry = geometry
        both = lambda x, *rest: (x, x)  # noqa: E731
        blocked_input = geometry.src_block
        has_bias, residual_sum = geometry.has_bias, geometry.residual_sum

        def shapes(x, w, *rest):  # x_blocked is not needed when x already is
            return conv_output_shape(x, w, self.geometry), [1] if blocked_input else x

        if residual_sum:  # inference only: no bprop
            self.forward = _custom("ConvForwardBiasSum", shapes, both)
        elif has_bias:
            self.backward = _custom("ConvBackwardBias",
                                    lambda dy, x, xb, w, g: (x, w, [w[0]]),
                                    lambda dy, x, xb, w, g: (x, x, x))

            def bprop_with_bias(x, w, b, g, out, dout):
                dx, dw, db = self.backward(dout[0], x, out[1], w, g)
                return dx, dw, db, ops.zeros_like(g)

            self.forward = _custom(
                "ConvForwardBias",
                shapes, both, bprop_with_bias)
        else:
            self.backward = _custom("ConvBackward", lambda dy, x, xb, w, g: (x, w),
                                    lambda dy, x, xb, w, g: (x, x))

            def bprop(x, w, g, out, dout):
                dx, dw = self.backward(dout[0], x, out[1], w, g)
                return dx, dw, ops.zeros_like(g)

            self.forward = _custom(
                "ConvForward", shapes, both, bprop)


def explicit_padding(kernel_size, pad_mode, padding):
    """(top, left, bottom, right) of nn.Conv2d's padding arguments."""
    kernel_h, kernel_w = kernel_size
    if pad_mode == "valid":
        return 0, 0, 0, 0
    if pad_mode == "pad":
        if isinstance(padding, int):
            return padding, padding, padding, padding
        return tuple(padding)
    if kernel_h % 2 == 0 or kernel_w % 2 == 0:
        raise ValueError("OneDnnConv2d supports pad_mode 'same' for odd kernels only")
    return kernel_h // 2, kernel_w // 2, kernel_h // 2, kernel_w // 2


class OneDnnConv2d(nn.Cell):
    """``nn.Conv2d`` with the same arguments and parameters, computed by our oneDNN kernels.

    Input (N, C, H, W) float32 -> (N, O, OH, OW) float32. ``compute_dtype`` 'bfloat16'
    multiplies in bfloat16 (inputs and weights rounded as they are reordered) and accumulates
    in float32: AMX on processors that have it. Parameters and gradients stay float32.
    ``input_grad=False`` (for a layer whose input is the image) skips computing the input
    gradient and reports it as zeros. ``blocked_input`` / ``blocked_output``: x / y (and their
    gradients) hold oneDNN's blocked layout (``src.model.layout``) of ``block`` channels (None:
    the ISA's, 16 with AVX-512, 8 with AVX2) instead of NCHW.
    Inference only (``for_inference``): ``activation`` ('relu', 'relu6') applied to the output
    inside the convolution; ``residual_sum``: called as ``conv(x, residual)``, the residual is
    added before the activation; ``constant_weights``: the weights are reordered once and kept.
    ``nhwc_output``: y (and its gradient) is (N, OH, OW, O), for an output flattened
    location-major next. ``algorithm``: 'winograd' computes the forward and both
    gradients by Winograd F(4x4, 3x3) (``src/kernels/winograd.cc``; 4x fewer multiplies,
    rounding ~1e-5 of the output's range apart from direct convolution's; with a bias the
    weight gradient stays direct) when ``winograd_possible()``, 'auto' does so when also both
    channel counts are at least WINOGRAD_MIN_CHANNELS, 'direct' never; ``self.algorithm``
    says which runs.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad_mode="same",
                 padding=0, dilation=1, group=1, has_bias=False, weight_init=None,
                 bias_init=None, compute_dtype="float32", input_grad=True, blocked_input=False,
                 blocked_output=False, activation=None, constant_weights=False,
                 residual_sum=False, nhwc_output=False, block=None, algorithm="direct"):
        super().__init__()
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
        if dilation != 1:
            raise ValueError("OneDnnConv2d supports dilation 1 only")
        if pad_mode == "same" and strides != (1, 1):
            raise ValueError("OneDnnConv2d supports pad_mode 'same' with stride 1 only")
        self.in_channels, self.out_channels, self.group = in_channels, out_channels, group
        self.kernel_size, self.stride, self.has_bias = kernel, strides, has_bias
        top, left, bottom, right = explicit_padding(kernel, pad_mode, padding)
        self.padding_tlbr, self.input_grad = (top, left, bottom, right), input_grad
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype {compute_dtype!r}: expected one of "
                             f"{', '.join(COMPUTE_DTYPES)}")
        self.compute_dtype = compute_dtype
        self.block = (block or cpu_info().block) if blocked_input or blocked_output else PLAIN
        check_blockable(in_channels, self.block if blocked_input else PLAIN, "input")
        check_blockable(out_channels, self.block if blocked_output else PLAIN, "output")
        if nhwc_output and blocked_output:
            raise ValueError("an output is NHWC or blocked, not both")
        self.blocked_input, self.blocked_output = blocked_input, blocked_output
        self.nhwc_output = nhwc_output
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {ACTIVATIONS}")
        if residual_sum and not has_bias:
            raise ValueError("residual_sum needs has_bias=True (inference copies have one)")
        self.activation, self.constant_weights = activation, constant_weights
        self.residual_sum = residual_sum
        if algorithm not in ALGORITHM_CHOICES:
            raise ValueError(f"algorithm {algorithm!r}: expected one of "
                             f"{', '.join(ALGORITHM_CHOICES)}")
        winograd = algorithm != "direct" and self.winograd_possible() and (
            algorithm == "winograd" or min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS)
        self.algorithm = "winograd" if winograd else "direct"
        geometry = ConvGeometry(
            stride_h=strides[0], stride_w=strides[1], pad_t=top, pad_l=left, pad_b=bottom,
            pad_r=right, groups=group, has_bias=int(has_bias),
            bf16=COMPUTE_DTYPES.index(compute_dtype), no_input_grad=int(not input_grad),
            src_block=self.block if blocked_input else PLAIN,
            dst_block=self.block if blocked_output else PLAIN,
            activation=ACTIVATIONS.index(activation),
            constant_weights_id=next(_constant_layer_ids) if constant_weights else 0,
            residual_sum=int(residual_sum), dst_nhwc=int(nhwc_output),
            winograd=ALGORITHMS.index(self.algorithm))
        self.geometry = geometry.as_tensor()
        self.weight = Parameter(initializer(weight_init or "he_uniform",
                                            (out_channels, in_channels // group, *kernel),
                                            ms.float32), name="weight")
        self.bias = Parameter(initializer(bias_init or "zeros", (out_channels,), ms.float32),
                              name="bias") if has_bias else None
        self.ops = ConvOps(geometry)
        self.forward = self.ops.forward

    def winograd_possible(self):
        """Whether this layer's geometry is one the Winograd kernel computes (3x3, stride 1,
        padding 1, one group, float32, blocked input and output)."""
        return (self.kernel_size == (3, 3) and self.stride == (1, 1) and self.group == 1
                and self.padding_tlbr == (1, 1, 1, 1) and self.compute_dtype == "float32"
                and self.blocked_input and self.blocked_output)

    def for_inference(self, scale=None, shift=None, activation=None, residual_sum=False):
        """An inference-only copy computing ``activation(scale * self(x) + shift [+
        residual])`` per output channel (numpy vectors of length out_channels, e.g. a BatchNorm
        folded in; None: 1 and 0; the residual when ``residual_sum``, then called as
        ``copy(x, residual)``), with its weights marked constant: a snapshot, not to be trained
        or reloaded."""
        if (self.activation or self.residual_sum) and (
                scale is not None or shift is not None or activation or residual_sum):
            raise ValueError("for_inference: this copy already applies its activation")
        has_bias = self.has_bias or shift is not None or residual_sum
        copy = OneDnnConv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                            pad_mode="pad", padding=self.padding_tlbr, group=self.group,
                            has_bias=has_bias, compute_dtype=self.compute_dtype,
                            input_grad=self.input_grad, blocked_input=self.blocked_input,
                            blocked_output=self.blocked_output, nhwc_output=self.nhwc_output,
                            activation=activation or self.activation, constant_weights=True,
                            residual_sum=residual_sum or self.residual_sum,
                            block=self.block or None, algorithm=self.algorithm)
        scale = np.ones(self.out_channels) if scale is None else scale
        weight = self.weight.asnumpy() * scale.reshape(-1, 1, 1, 1)
        copy.weight.set_data(Tensor(weight.astype(np.float32)))
        if has_bias:
            bias = (self.bias.asnumpy() if self.bias is not None else 0.0) * scale + (
                0.0 if shift is None else shift)
            assert copy.bias is not None   # has_bias
            copy.bias.set_data(Tensor(np.asarray(bias, np.float32)))
        return copy

    def construct(self, x, residual=None):
        if self.residual_sum:
            return self.forward(x, self.weight, self.bias, residual, self.geometry)[0]
        if self.has_bias:
            return self.forward(x, self.weight, self.bias, self.geometry)[0]
        return self.forward(x, self.weight, self.geometry)[0]
