"""One training step in graph mode: scaled backward pass, gradient all-reduce, overflow check,
update; plus the optimizer of the reference (Momentum 0.9, weight decay on non-BN parameters).
"""
import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.context import ParallelMode

from src.device import kernel_op
from src.engine.precision import (
    CONCAT_CHECK,
    FINITE_CHECKS,
    MINDSPORE_CHECK,
    OUR_CHECK,
    PrecisionPlan,
    apply_precision,
    precision_plan,
)
from src.loss import SSDWithLossCell
from src.lr_schedule import TableSchedule

_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(scale, grad):
    return grad / scale


_flatten = ops.MultitypeFuncGraph("flatten")


@_flatten.register("Tensor")
def _flatten_tensor(grad):
    return grad.reshape(-1)


def no_weight_decay(param):
    """BatchNorm's gamma and beta are not decayed; conv weights and head biases are."""
    return "beta" in param.name or "gamma" in param.name


def create_optimizer(network, lr_table, momentum=0.9, weight_decay=4e-5):
    """nn.Momentum over the trainable parameters, lr read from ``lr_table`` at the global step."""
    params = network.trainable_params()
    groups = [{"params": [p for p in params if not no_weight_decay(p)],
               "weight_decay": weight_decay},
              {"params": [p for p in params if no_weight_decay(p)], "weight_decay": 0.0},
              {"order_params": params}]
    return nn.Momentum(groups, learning_rate=TableSchedule(lr_table), momentum=momentum)


def fused_all_finite():
    """Our Custom op: any number of float32 tensors -> bool (1,), True when none holds inf or
    NaN (``src/kernels/all_finite.cc``)."""
    return kernel_op("AllFinite", lambda *shapes: [1], lambda *types: ms.bool_)


class TrainStep(nn.Cell):
    """(image, gt_loc, gt_label, num_match) -> (loss, cls_loss, loc_loss, finite, loss_scale).

    Gradients of ``loss * loss_scale`` are averaged over devices in data-parallel runs, divided
    by the scale and checked: if any is inf or NaN the update is skipped (``finite`` is False).
    With ``dynamic=True`` the scale halves on such a step and doubles after ``scale_window``
    finite steps in a row. Parameter names stay those of the wrapped network.

    ``finite_check`` (``src.engine.precision``): 'ours', our one-pass CPU op (the network runs
    our kernels); 'concat', one ``isfinite`` over the gradients laid end to end (CPU);
    'mindspore', ``ms.amp.all_finite`` (GPU, Ascend: the NPU's float status in saturation
    mode), its verdict agreed by all devices of a data-parallel run.
    """

    def __init__(self, network_with_loss, optimizer, loss_scale=1.0, dynamic=False,
                 scale_factor=2.0, scale_window=1000, finite_check=CONCAT_CHECK):
        super().__init__(auto_prefix=False)
        if finite_check not in FINITE_CHECKS:
            raise ValueError(f"finite_check {finite_check!r}: expected one of "
                             f"{', '.join(FINITE_CHECKS)}")
        self.network = network_with_loss
        self.finite_check = finite_check
        self.finite_op = fused_all_finite() if finite_check == OUR_CHECK else None
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.loss_scale = Parameter(Tensor(float(loss_scale), ms.float32), name="loss_scale",
                                    requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="good_steps", requires_grad=False)
        self.dynamic = dynamic
        # grad / 1 is grad: with a fixed scale of 1 (fp32 training) the division is left out.
        self.unscale = dynamic or float(loss_scale) != 1.0
        self.scale_factor = float(scale_factor)
        self.scale_window = int(scale_window)
        self.hyper_map = ops.HyperMap()
        self.grad_reducer = ops.identity
        self.flag_reducer = None
        if ms.get_auto_parallel_context("parallel_mode") in (ParallelMode.DATA_PARALLEL,
                                                             ParallelMode.HYBRID_PARALLEL):
            self.grad_reducer = nn.DistributedGradReducer(
                self.weights, ms.get_auto_parallel_context("gradients_mean"))
            if finite_check == MINDSPORE_CHECK:
                # The NPU's float status is each device's own: without agreeing, one device
                # would skip a step another applies.
                self.flag_reducer = ops.AllReduce()

    def construct(self, image, gt_loc, gt_label, num_match):
        loss, cls_loss, loc_loss = self.network(image, gt_loc, gt_label, num_match)
        scale = self.loss_scale
        sens = (ops.fill(loss.dtype, loss.shape, scale), ops.zeros_like(cls_loss),
                ops.zeros_like(loc_loss))
        grads = self.grad(self.network, self.weights)(image, gt_loc, gt_label, num_match, sens)
        grads = self.grad_reducer(grads)
        if self.unscale:
            grads = self.hyper_map(ops.partial(_unscale, scale), grads)
        finite = self.all_finite(grads)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
        if self.dynamic:
            loss = ops.depend(loss, self.update_scale(finite))
        return loss, cls_loss, loc_loss, finite, scale

    def all_finite(self, grads):
        """True when no gradient overflowed. On CPU without our op, one check over the
        gradients laid end to end: ms.amp.all_finite's two ops per gradient cost more on CPU
        than the copy (docs/performance.md, "Design choices measured")."""
        if self.finite_op is not None:
            return self.finite_op(*grads).reshape(())
        if self.finite_check == MINDSPORE_CHECK:
            finite = ms.amp.all_finite(grads)
            if self.flag_reducer is not None:
                overflows = self.flag_reducer(ops.logical_not(finite).astype(ms.float32))
                finite = overflows < 0.5
            return finite
        return ops.isfinite(ops.concat(self.hyper_map(_flatten, grads))).all()

    def update_scale(self, finite):
        if finite:
            good = self.good_steps + 1
            if good >= self.scale_window:
                ops.assign(self.loss_scale, self.loss_scale * self.scale_factor)
                good = good * 0
        else:
            ops.assign(self.loss_scale, ops.maximum(self.loss_scale / self.scale_factor, 1.0))
            good = self.good_steps * 0
        return ops.assign(self.good_steps, good)


def fusion_splits(params, groups: int = 4) -> list:
    """Indices into ``params`` (in order) that cut them into ``groups`` all-reduce fusion
    groups of about equal size: the first parameter index past each 1/groups of the elements
    (MindSpore's ``all_reduce_fusion_config``)."""
    sizes = np.array([int(np.prod(p.shape)) for p in params], np.int64)
    ends = np.cumsum(sizes)
    cuts = [int(np.searchsorted(ends, ends[-1] * k / groups, side="right")) + 1
            for k in range(1, groups)]
    return sorted({c for c in cuts if 0 < c < len(params)})


def create_train_step(config, network, lr_table, platform: str, world: int = 1,
                      uint8_input: bool = False) -> tuple:
    """The train step of ``config`` for a detector on ``platform``: its precision plan applied
    (``src.engine.precision``), the reference's loss and optimizer; ``uint8_input``: images
    come as uint8 and are normalised in the graph. Returns (TrainStep in training mode,
    PrecisionPlan)."""
    ours = network.layers.ours
    plan: PrecisionPlan = precision_plan(config, platform, ours)
    optimizer = create_optimizer(network, lr_table, config.momentum, config.weight_decay)
    if world > 1 and platform != "CPU":   # read when the gradient reducer is built
        splits = list(config.all_reduce_fusion) or fusion_splits(optimizer.parameters)
        ms.set_auto_parallel_context(all_reduce_fusion_config=splits)
    loss = SSDWithLossCell(apply_precision(network, plan), config.gamma, config.alpha,
                           config.loss_norm == "global", world, fused_focal=ours,
                           uint8_input=uint8_input)
    step = TrainStep(loss, optimizer, plan.loss_scale, dynamic=plan.dynamic,
                     finite_check=plan.finite_check)
    step.set_train(True)
    return step, plan
