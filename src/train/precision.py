"""How a platform trains: the network's precision and mixed-precision level, the loss scale,
and the overflow check, decided in one place from the config (``precision_plan``).

* CPU: fp32, loss scale 1, the finite check over the gradients by our one-pass op (our
  kernels) or one ``isfinite`` over them laid end to end.
* GPU: fp16 by default, as the reference; MindSpore's O2 level keeps BatchNorm (and, through
  the float32 outputs, the loss) in fp32 - the reference cast the whole detector (O3,
  ``--amp_level O3``). Dynamic loss scale by default.
* Ascend: fp32 graphs as the reference, the device's operator precision set explicitly
  (``--ascend_precision_mode``, ``src.device.init_device``); dynamic loss scale by default.
  GPU and Ascend check overflow with ``ms.amp.all_finite``, which on Ascend 910A (saturation
  mode: inf becomes +-max) and under ``MS_ASCEND_CHECK_OVERFLOW_MODE=SATURATION_MODE`` reads
  the NPU's float status instead of looking for inf and NaN.
"""
from dataclasses import dataclass

from src.config import Config

OUR_CHECK, CONCAT_CHECK, MINDSPORE_CHECK = "ours", "concat", "mindspore"
FINITE_CHECKS = (OUR_CHECK, CONCAT_CHECK, MINDSPORE_CHECK)


@dataclass(frozen=True)
class PrecisionPlan:
    """``precision``: fp32 | fp16 (the network's compute type); ``amp_level``: O0 (none), O2
    or O3; ``loss_scale``: the (initial) scale; ``dynamic``: the scale backs off on overflow;
    ``finite_check``: ours | concat | mindspore (``TrainStep.all_finite``)."""

    precision: str
    amp_level: str
    loss_scale: float
    dynamic: bool
    finite_check: str

    def describe(self) -> str:
        amp = f" (amp {self.amp_level})" if self.amp_level != "O0" else ""
        mode = "dynamic" if self.dynamic else "static"
        return f"{self.precision}{amp}, loss scale {self.loss_scale:g} ({mode})"


def precision_plan(config: Config, platform: str, our_kernels: bool = False) -> PrecisionPlan:
    """The plan ``config`` gives on ``platform`` ('CPU', 'GPU', 'Ascend'); ``our_kernels``: the
    network runs our CPU kernel library (its finite-check op is used; it computes float32 or,
    with ``conv_dtype`` bfloat16, bfloat16 multiplies, so fp16 is refused with it)."""
    precision = config.precision
    if precision == "auto":
        precision = "fp16" if platform == "GPU" else "fp32"
    if precision == "fp16" and our_kernels:
        raise ValueError(
            "--precision fp16 on CPU: our oneDNN kernels (the CPU default) take float32 "
            "tensors, and fp16 ones would reach them unconverted. Use --precision fp32 (the CPU "
            "default; --conv_dtype bfloat16 for bfloat16 multiplies where the CPU has them), or "
            "--conv_impl mindspore to run fp16 through MindSpore's own CPU layers")
    amp_level = "O0" if precision == "fp32" else config.amp_level
    scale = 1.0 if platform == "CPU" and precision == "fp32" else float(config.loss_scale)
    if config.loss_scale_mode == "auto":
        dynamic = platform != "CPU"
    else:
        dynamic = config.loss_scale_mode == "dynamic"
    if platform != "CPU":
        check = MINDSPORE_CHECK
    else:
        check = OUR_CHECK if our_kernels else CONCAT_CHECK
    return PrecisionPlan(precision, amp_level, scale, dynamic, check)


def apply_precision(network, plan: PrecisionPlan):
    """``network`` set to train under ``plan``, in place, and returned: unchanged (O0);
    every cell in fp16 but those of MindSpore's O2 black list (``ms.amp.get_black_list``:
    BatchNorm), which stay fp32 (O2); or every cell in fp16 (O3, the reference's GPU cast).
    The detector's outputs are float32 either way, so the loss is computed in fp32.

    In place rather than ``ms.amp.auto_mixed_precision``: its wrapper cells would add
    ``_backbone.`` to every parameter name once the loss cell holds the network, and
    checkpoints would no longer match the reference's names."""
    import mindspore as ms

    if plan.amp_level == "O0":
        return network
    network.to_float(ms.float16)
    if plan.amp_level == "O2":
        kept = tuple(ms.amp.get_black_list())
        for _, cell in network.cells_and_names():
            if isinstance(cell, kept):
                cell.to_float(ms.float32)
    return network
