"""One training step in graph mode: scaled backward pass, gradient all-reduce, overflow check,
update; plus the optimizer of the reference (Momentum 0.9, weight decay on non-BN parameters).
"""
import os
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.context import ParallelMode
from mindspore.nn.optim.momentum import _momentum_opt

from src.config import Config
from src.device import kernel_op
from src.loss import SSDWithLossCell
from src.lr_schedule import TableSchedule
from src.train.precision import (
    CONCAT_CHECK,
    FINITE_CHECKS,
    MINDSPORE_CHECK,
    OUR_CHECK,
    PrecisionPlan,
    apply_precision,
    precision_plan,
)

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


def create_optimizer(network, lr_table, momentum=0.9, weight_decay=4e-5,
                     loss_scale=1.0) -> "SkippingMomentum":
    """Momentum over the trainable parameters, lr read from ``lr_table`` at the global step;
    ``loss_scale``: a fixed scale the optimizer divides out (as the reference's
    ``nn.Momentum(loss_scale=...)``), 1 where the train step unscales or there is none."""
    params = network.trainable_params()
    groups = [{"params": [p for p in params if not no_weight_decay(p)],
               "weight_decay": weight_decay},
              {"params": [p for p in params if no_weight_decay(p)], "weight_decay": 0.0},
              {"order_params": params}]
    return SkippingMomentum(groups, learning_rate=TableSchedule(lr_table), momentum=momentum,
                            loss_scale=loss_scale)


_keep_finite = ops.MultitypeFuncGraph("keep_finite")


@_keep_finite.register("Tensor", "Tensor")
def _keep_finite_tensor(finite, grad):
    return ops.select(finite, grad, ops.zeros_like(grad))


class SkippingMomentum(nn.Momentum):
    """``nn.Momentum`` whose update is skipped, without a branch, when ``finite`` is False.

    A skipped step runs the same ops with learning rate 0, gradients 0 (selected, so inf and
    NaN do not reach the moments) and momentum 1: ``accum = accum * 1 + 0`` and ``w = w - 0 *
    accum`` leave every parameter and moment bit for bit as it was, and a finite step makes
    ``nn.Momentum``'s update (its lr and momentum multiplied by 1). The global step
    advances on every step, skipped or not, so the lr in use is the table's entry at the
    trainer's position (what the log shows and ``--resume`` restores)."""

    def construct(self, gradients, finite):
        gradients = self.decay_weight(gradients)
        gradients = self.gradients_centralization(gradients)
        gradients = self.scale_grad(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        keep = finite.astype(lr.dtype)
        lr = lr * keep
        momentum = self.momentum * keep + (1 - keep)
        gradients = self.hyper_map(ops.partial(_keep_finite, finite), gradients)
        return self.hyper_map_reverse(ops.partial(_momentum_opt, self.opt, momentum, lr),
                                      gradients, self.params, self.moments)


def fused_all_finite():
    """Our Custom op: any number of float32 tensors -> bool (1,), True when none holds inf or
    NaN (``src/kernels/all_finite.cc``)."""
    return kernel_op("AllFinite", lambda *shapes: [1], lambda *types: ms.bool_)


def uses_float_status() -> bool:
    """Whether MindSpore's overflow check reads the NPU's float status (Ascend 910A, or 910B
    in saturation mode): that status must then be cleared before the step's forward."""
    from mindspore._c_expression import MSContext

    if ms.get_context("device_target") != "Ascend":
        return False
    soc = MSContext.get_instance()
    saturation = os.environ.get("MS_ASCEND_CHECK_OVERFLOW_MODE") == "SATURATION_MODE"
    return (soc.ascend_soc_supports_feature("amp_loss_scale_train_classic_target")
            or (saturation and soc.ascend_soc_supports_feature("train_hq_dtype_line")))


class TrainStep(nn.Cell):
    """(image, gt_loc, gt_label, num_match) -> (loss, cls_loss, loc_loss, finite, loss_scale).

    Gradients of ``loss * loss_scale`` are averaged over devices in data-parallel runs, divided
    by the scale (in the graph, or by the optimizer when it was made with the same fixed
    ``loss_scale``) and checked: if any is inf or NaN the update is skipped (``finite`` is
    False). With ``dynamic=True`` the scale halves on such a step (not below 1) and doubles
    after ``scale_window`` finite steps in a row (not to inf). Parameter names stay those of
    the wrapped network.

    The graph holds no control flow: the skip is ``SkippingMomentum``'s, the scale update is
    made of selects (as MindSpore's ``DynamicLossScaler.adjust``), and every ``if`` in
    ``construct`` tests a Python setting fixed when the cell is built. In kernel-by-kernel mode
    (GPU, Ascend O0) a tensor-valued ``if`` would stop the launch queue and read the flag back
    to the host before the optimizer's hundreds of launches.

    ``finite_check`` (``src.train.precision``): 'ours', our one-pass CPU op (the network runs
    our kernels); 'concat', one ``isfinite`` over the gradients laid end to end (CPU);
    'mindspore', ``ms.amp.all_finite`` (GPU, Ascend: the NPU's float status in saturation
    mode, cleared before the forward, read and cleared again by ``all_finite``), its verdict
    agreed by all devices of a data-parallel run.
    """

    def __init__(self, network_with_loss, optimizer, loss_scale=1.0, dynamic=False,
                 scale_factor=2.0, scale_window=1000, finite_check=CONCAT_CHECK):
        super().__init__(auto_prefix=False)
        if finite_check not in FINITE_CHECKS:
            raise ValueError(f"finite_check {finite_check!r}: expected one of "
                             f"{', '.join(FINITE_CHECKS)}")
        if not isinstance(optimizer, SkippingMomentum):
            raise TypeError("TrainStep needs create_optimizer's SkippingMomentum (it skips "
                            "non-finite updates without a branch)")
        folded = float(optimizer.loss_scale)
        if folded != 1.0 and (dynamic or folded != float(loss_scale)):
            raise ValueError(f"the optimizer divides by a fixed loss scale {folded:g}, but the "
                             f"step's scale is {'dynamic' if dynamic else f'{loss_scale:g}'}")
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
        # grad / 1 is grad: with a fixed scale of 1 (fp32 training), or one the optimizer
        # divides out, the division is left out of the graph.
        self.unscale = dynamic or (float(loss_scale) != 1.0 and folded == 1.0)
        self.scale_factor = float(scale_factor)
        self.scale_window = int(scale_window)
        self.hyper_map = ops.HyperMap()
        self.grad_reducer = ops.identity
        self.flag_reducer = None
        self.float_status = finite_check == MINDSPORE_CHECK and uses_float_status()
        if self.float_status:
            from mindspore.ops.operations.math_ops import NPUClearFloatStatusV2

            self.clear_status = NPUClearFloatStatusV2()
            self.status = Tensor([0] * 8, ms.int32)
        if ms.get_auto_parallel_context("parallel_mode") in (ParallelMode.DATA_PARALLEL,
                                                             ParallelMode.HYBRID_PARALLEL):
            self.grad_reducer = nn.DistributedGradReducer(
                self.weights, ms.get_auto_parallel_context("gradients_mean"))
            if finite_check == MINDSPORE_CHECK:
                # The NPU's float status is each device's own: without agreeing, one device
                # would skip a step another applies.
                self.flag_reducer = ops.AllReduce()

    def construct(self, image, gt_loc, gt_label, num_match):
        if self.float_status:
            image = ops.depend(image, self.clear_status(self.status))
        loss, cls_loss, loc_loss = self.network(image, gt_loc, gt_label, num_match)
        scale = self.loss_scale
        sens = (ops.fill(loss.dtype, loss.shape, scale), ops.zeros_like(cls_loss),
                ops.zeros_like(loc_loss))
        grads = self.grad(self.network, self.weights)(image, gt_loc, gt_label, num_match, sens)
        grads = self.grad_reducer(grads)
        if self.unscale:
            grads = self.hyper_map(ops.partial(_unscale, scale), grads)
        finite = self.all_finite(grads)
        loss = ops.depend(loss, self.optimizer(grads, finite))
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
        """The dynamic scale's update by selects: x2 after ``scale_window`` finite steps in a
        row (kept where doubling would overflow float32), /2 (not below 1) on a skipped step."""
        scale = self.loss_scale
        good = (self.good_steps + 1) * finite.astype(ms.int32)
        grow = good >= self.scale_window
        grown = scale * self.scale_factor
        grown = ops.select(ops.isfinite(grown), grown, scale)
        shrunk = ops.maximum(scale / self.scale_factor, 1.0)
        new_scale = ops.select(finite, ops.select(grow, grown, scale), shrunk)
        good = ops.select(grow, ops.zeros_like(good), good)
        return ops.depend(ops.assign(self.good_steps, good),
                          ops.assign(self.loss_scale, new_scale))


def fusion_splits(params, groups: int = 4) -> list:
    """Indices into ``params`` (in order) that cut them into ``groups`` all-reduce fusion
    groups of about equal size: the first parameter index past each 1/groups of the elements
    (MindSpore's ``all_reduce_fusion_config``)."""
    sizes = np.array([int(np.prod(p.shape)) for p in params], np.int64)
    ends = np.cumsum(sizes)
    cuts = [int(np.searchsorted(ends, ends[-1] * k / groups, side="right")) + 1
            for k in range(1, groups)]
    return sorted({c for c in cuts if 0 < c < len(params)})


def create_train_step(config: Config, network, lr_table, platform: str, world: int = 1,
                      uint8_input: bool = False,
                      precision: Optional[PrecisionPlan] = None) -> tuple:
    """The train step of ``config`` for a detector on ``platform``: its precision plan applied
    (``precision``, else ``src.train.precision.precision_plan``'s), the reference's loss and
    optimizer; ``uint8_input``: images come as uint8 and are normalised in the graph. Returns
    (TrainStep in training mode, PrecisionPlan)."""
    ours = network.layers.ours
    plan: PrecisionPlan = precision or precision_plan(config, platform, ours)
    # A fixed scale is divided out by the optimizer, as the reference's nn.Momentum did.
    folded = 1.0 if plan.dynamic else plan.loss_scale
    optimizer = create_optimizer(network, lr_table, config.momentum, config.weight_decay,
                                 folded)
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
