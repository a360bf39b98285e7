"""BatchNorm with the residual add and activation that follow it: ``act(bn(x) [+ residual])``.

``BatchNormAct2d`` is an ``nn.BatchNorm2d`` (same arguments, parameters and names, so
checkpoints move freely) that also applies the add and activation. When the network is built
with our CPU kernels (``src.model.conv.building_with('onednn')``), a training step runs all of
it as one Custom op with its own backward op (``src/kernels/batch_norm.cc``): MindSpore's CPU
BatchNorm backward is about 3.5x slower than PyTorch's on this model's shapes, and the ReLU,
its gradient and the add are three more passes over the activations. Otherwise (GPU, Ascend,
eval mode, frozen statistics) it is MindSpore's BatchNorm, add and activation ops.
"""
import mindspore as ms
from mindspore import Tensor, nn, ops

from src.device import KERNEL_LIBRARY
from src.model.conv import current_conv_impl

ACTIVATIONS = (None, "relu", "relu6")  # index = the kernel's activation code


def _custom(function, out_shape, outputs, bprop=None):
    """A float32 Custom op of our library with ``outputs`` outputs."""
    return ops.Custom(f"{KERNEL_LIBRARY}:{function}", out_shape=out_shape,
                      out_dtype=lambda x, *rest: (x,) * outputs, func_type="aot", bprop=bprop)


def fused_ops(residual):
    """Forward Custom op ``(x, [residual,] gamma, beta, settings) -> (y, batch mean, batch
    variance (unbiased), invstd)`` with its backward op as bprop."""
    if residual:
        backward = _custom("BatchNormAddActBackward",
                           lambda dy, x, y, gamma, mean, invstd, s: (x, gamma, gamma, x), 4)

        def bprop(x, res, gamma, beta, settings, out, dout):
            dx, dgamma, dbeta, dres = backward(dout[0], x, out[0], gamma, out[1], out[3],
                                               settings)
            return dx, dres, dgamma, dbeta, ops.zeros_like(settings)

        return _custom("BatchNormAddActForward",
                       lambda x, res, gamma, beta, s: (x, gamma, gamma, gamma), 4, bprop)
    backward = _custom("BatchNormActBackward",
                       lambda dy, x, y, gamma, mean, invstd, s: (x, gamma, gamma), 3)

    def bprop(x, gamma, beta, settings, out, dout):
        dx, dgamma, dbeta = backward(dout[0], x, out[0], gamma, out[1], out[3], settings)
        return dx, dgamma, dbeta, ops.zeros_like(settings)

    return _custom("BatchNormActForward",
                   lambda x, gamma, beta, s: (x, gamma, gamma, gamma), 4, bprop)


class AddActivation(nn.Cell):
    """``act(x [+ residual])``: what a BatchNormAct2d does after normalising (and all that is
    left of one folded into the convolution before it)."""

    def __init__(self, activation=None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {ACTIVATIONS}")
        self.activation = activation
        self.activate = {None: None, "relu": nn.ReLU(), "relu6": nn.ReLU6()}[activation]

    def construct(self, x, residual=None):
        if residual is not None:
            x = x + residual
        if self.activate is not None:
            x = self.activate(x)
        return x


class BatchNormAct2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d(num_features, eps, momentum)``, then ``+ residual`` when given, then
    ``activation`` (None, 'relu' or 'relu6'). Input and residual (N, C, H, W) float32.

    ``fused=True`` (CPU, our kernel library built) computes a training step's BatchNorm, add
    and activation in one Custom op; the running statistics are updated as ``nn.BatchNorm2d``
    updates them (``momentum`` weight on the old value, unbiased batch variance).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.9, activation=None, fused=False):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.after = AddActivation(activation)
        self.activation = activation
        self.fused = fused
        if fused:
            self.settings = Tensor([eps, ACTIVATIONS.index(activation)], ms.float32)
            self.fused_forward = fused_ops(residual=False)
            self.fused_add_forward = fused_ops(residual=True)

    def _batch_statistics(self):
        if self.use_batch_statistics is None:
            return self.training
        return self.use_batch_statistics

    def construct(self, x, residual=None):
        if self.fused and self._batch_statistics():
            if residual is None:
                y, mean, var, _ = self.fused_forward(x, self.gamma, self.beta, self.settings)
            else:
                y, mean, var, _ = self.fused_add_forward(x, residual, self.gamma, self.beta,
                                                         self.settings)
            keep = 1.0 - self.momentum  # self.momentum is the batch's weight (nn.BatchNorm2d)
            y = ops.depend(y, ops.assign(self.moving_mean,
                                         self.moving_mean * keep + mean * self.momentum))
            return ops.depend(y, ops.assign(self.moving_variance,
                                            self.moving_variance * keep + var * self.momentum))
        return self.after(super().construct(x), residual)


def batch_norm(channels, eps=1e-5, momentum=0.9, activation=None):
    """A BatchNormAct2d, fused when the network is being built with our CPU kernels."""
    return BatchNormAct2d(channels, eps, momentum, activation,
                          fused=current_conv_impl() == "onednn")
