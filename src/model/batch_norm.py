"""BatchNorm with the residual add and activation that follow it: ``act(bn(x) [+ residual])``.

``BatchNormAct2d`` is an ``nn.BatchNorm2d`` (same arguments, parameters and names, so
checkpoints move freely) that also applies the add and activation. When the network is built
with our CPU kernels (``src.model.layers.Layers`` 'onednn'), it runs all of
it as one Custom op with its own backward op (``src/kernels/batch_norm.cc``), in every mode:
MindSpore's CPU BatchNorm backward is several times slower than PyTorch's on this model's
shapes (docs/performance.md), the ReLU, its gradient and the add are three more passes over the
activations, and ours reads and writes oneDNN's blocked layout (``src.model.layout``).
Otherwise (GPU, Ascend, MindSpore's convolutions) it is MindSpore's BatchNorm, add and
activation ops.
"""
import mindspore as ms
from mindspore import Tensor, nn, ops

from src.device import kernel_op
from src.model.layout import PLAIN, check_blockable
from src.model.onednn_conv import ACTIVATIONS  # index = the kernels' activation code

ACTIVATION_LAYERS = {"relu": nn.ReLU, "relu6": nn.ReLU6}  # MindSpore's, for each activation



def _custom(function, out_shape, outputs, bprop=None):
    """A float32 Custom op of our library with ``outputs`` outputs."""
    return kernel_op(function, out_shape, lambda x, *rest: (x,) * outputs, bprop)


def fused_ops(residual):
    """Forward Custom op ``(x, [residual,] gamma, beta, running_mean, running_variance,
    settings) -> (y, mean, invstd, new running mean, new running variance)`` with its backward
    op as bprop. ``settings``: [eps, activation code, block (PLAIN: NCHW), use the running
    statistics, momentum (the batch's weight in the running statistics)]."""
    if residual:
        backward = _custom("BatchNormAddActBackward",
                           lambda dy, x, y, gamma, mean, invstd, s: (x, gamma, gamma, x), 4)

        def bprop_with_residual(x, res, gamma, beta, mean, var, settings, out, dout):
            dx, dgamma, dbeta, dres = backward(dout[0], x, out[0], gamma, out[1], out[2],
                                               settings)
            return (dx, dres, dgamma, dbeta, ops.zeros_like(mean), ops.zeros_like(var),
                    ops.zeros_like(settings))

        return _custom("BatchNormAddActForward",
                       lambda x, res, gamma, *rest: (x,) + (gamma,) * 4, 5, bprop_with_residual)
    backward = _custom("BatchNormActBackward",
                       lambda dy, x, y, gamma, mean, invstd, s: (x, gamma, gamma), 3)

    def bprop(x, gamma, beta, mean, var, settings, out, dout):
        dx, dgamma, dbeta = backward(dout[0], x, out[0], gamma, out[1], out[2], settings)
        return (dx, dgamma, dbeta, ops.zeros_like(mean), ops.zeros_like(var),
                ops.zeros_like(settings))

    return _custom("BatchNormActForward", lambda x, gamma, *rest: (x,) + (gamma,) * 4, 5, bprop)


class AddActivation(nn.Cell):
    """``act(x [+ residual])``: what a BatchNormAct2d running MindSpore's ops does after
    normalising."""

    def __init__(self, activation=None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {ACTIVATIONS}")
        self.activation = activation
        self.activate = ACTIVATION_LAYERS[activation]() if activation else None

    def construct(self, x, residual=None):
        if residual is not None:
            x = x + residual
        if self.activate is not None:
            x = self.activate(x)
        return x


class BatchNormAct2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d(num_features, eps, momentum)``, then ``+ residual`` when given, then
    ``activation`` (None, 'relu' or 'relu6'). Input and residual (N, C, H, W) float32.

    ``fused=True`` (CPU, our kernel library built) computes BatchNorm, add and activation in
    one Custom op, in every mode; in training with batch statistics the running statistics are
    updated as ``nn.BatchNorm2d`` updates them (``momentum`` weight on the old value, unbiased
    batch variance). ``block`` (fused only; PLAIN: NCHW): x, residual and y are in the blocked
    layout of ``src.model.layout`` with this many channels per block. ``residual``: the model
    calls it with a residual.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.9, activation=None, fused=False,
                 block=PLAIN, residual=False):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.takes_residual = residual  # called with a residual (tells src.model.fold)
        self.after = AddActivation(activation)
        self.activation = activation
        if block != PLAIN and not fused:
            raise ValueError("a blocked BatchNorm needs the fused kernel (fused=True)")
        check_blockable(num_features, block, "BatchNorm")
        self.fused, self.block = fused, block
        if fused:
            code = ACTIVATIONS.index(activation)  # self.momentum: the batch's weight
            self.batch_settings = Tensor([eps, code, block, 0, self.momentum], ms.float32)
            self.running_settings = Tensor([eps, code, block, 1, 0], ms.float32)
            self.fused_forward = fused_ops(residual=False)
            self.fused_add_forward = fused_ops(residual=True)

    def _batch_statistics(self):
        if self.use_batch_statistics is None:
            return self.training
        return self.use_batch_statistics

    def _fused(self, x, residual, settings):
        if residual is None:
            return self.fused_forward(x, self.gamma, self.beta, self.moving_mean,
                                      self.moving_variance, settings)
        return self.fused_add_forward(x, residual, self.gamma, self.beta, self.moving_mean,
                                      self.moving_variance, settings)

    def construct(self, x, residual=None):
        if self.fused and not self._batch_statistics():
            return self._fused(x, residual, self.running_settings)[0]
        if self.fused:
            y, _, _, mean, variance = self._fused(x, residual, self.batch_settings)
            y = ops.depend(y, ops.assign(self.moving_mean, mean))
            return ops.depend(y, ops.assign(self.moving_variance, variance))
        return self.after(super().construct(x), residual)
