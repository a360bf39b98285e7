"""Train step: weight-decay groups, skipped non-finite updates, dynamic loss scale, lr by step."""
import numpy as np
import pytest

from tests.conftest import needs_x86_kernels


def tiny_with_loss_class():
    """Conv + BN 'network' with the (loss, cls_loss, loc_loss) outputs of SSDWithLossCell."""
    import mindspore as ms
    from mindspore import nn, ops

    class TinyWithLoss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, has_bias=True, bias_init="zeros")
            self.bn = nn.BatchNorm2d(4)

        def construct(self, image, gt_loc, gt_label, num_match):
            out = self.bn(self.conv(image))
            cls = ops.reduce_mean(out * out) + ops.cast(gt_label.sum(), ms.float32) * 0
            loc = ops.reduce_mean(ops.abs(out - gt_loc.mean())) + ops.cast(num_match.sum(),
                                                                           ms.float32) * 0
            return cls + loc, cls, loc

    return TinyWithLoss


@pytest.fixture(scope="module")
def parts(graph_cpu):
    import mindspore as ms

    return ms, tiny_with_loss_class()


def inputs(ms, poison=False):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    if poison:
        image[0, 0, 0, 0] = np.nan
    return (ms.Tensor(image), ms.Tensor(np.ones((2, 5, 4), np.float32)),
            ms.Tensor(np.ones((2, 5), np.int32)), ms.Tensor(np.ones((2, 1), np.int32)))


def weights(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


def test_weight_decay_groups(parts):
    ms, tiny_cls = parts
    from src.train.train_step import create_optimizer

    net = tiny_cls()
    optimizer = create_optimizer(net, np.full(10, 0.1, np.float32), weight_decay=4e-5)
    names = [p.name for p in optimizer.parameters]
    assert names == [p.name for p in net.trainable_params()]
    decay = {name: float(np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value))
             for name, value in zip(names, optimizer.weight_decay)}
    assert decay["conv.weight"] == pytest.approx(4e-5) and decay["conv.bias"] == pytest.approx(4e-5)
    assert decay["bn.gamma"] == 0 and decay["bn.beta"] == 0


@pytest.mark.parametrize("finite_check", [
    "concat", pytest.param("ours", marks=needs_x86_kernels), "mindspore"])
def test_finite_step_updates_and_poisoned_step_is_skipped(parts, finite_check):
    """Each overflow check: 'mindspore' is ms.amp.all_finite, here on its CPU path (GPU and
    Ascend take the same call)."""
    ms, tiny_cls = parts
    from src.train.train_step import TrainStep, create_optimizer

    net = tiny_cls()
    step = TrainStep(net, create_optimizer(net, np.full(10, 0.1, np.float32)), loss_scale=1.0,
                     finite_check=finite_check)
    assert (step.finite_op is not None) == (finite_check == "ours")
    step.set_train(True)
    before = weights(net)
    loss, cls, loc, finite, scale = step(*inputs(ms))
    assert bool(finite.asnumpy()) and np.isfinite(loss.asnumpy())
    after = weights(net)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    loss, cls, loc, finite, scale = step(*inputs(ms, poison=True))
    assert not bool(finite.asnumpy())
    for k, value in weights(net).items():
        np.testing.assert_array_equal(value, after[k])


@needs_x86_kernels
def test_our_finite_check_finds_one_bad_value_anywhere(graph_cpu):
    import mindspore as ms

    from src.train.train_step import fused_all_finite

    check = fused_all_finite()
    rng = np.random.default_rng(1)
    tensors = [rng.normal(size=shape).astype(np.float32) * 1e30
               for shape in [(64, 3, 7, 7), (64,), (1,), (513, 17), (3, 3, 3, 3)]]
    assert bool(check(*[ms.Tensor(t) for t in tensors]).asnumpy())
    for index, bad in [(0, np.inf), (2, np.nan), (3, -np.inf), (4, np.float32(np.nan))]:
        poisoned = [t.copy() for t in tensors]
        poisoned[index].reshape(-1)[-1] = bad           # the very last value of one tensor
        assert not bool(check(*[ms.Tensor(t) for t in poisoned]).asnumpy()), (index, bad)


def test_dynamic_scale_halves_on_overflow_and_grows_after_window(parts):
    ms, tiny_cls = parts
    from src.train.train_step import TrainStep, create_optimizer

    net = tiny_cls()
    step = TrainStep(net, create_optimizer(net, np.full(10, 0.01, np.float32)), loss_scale=1024.0,
                     dynamic=True, scale_window=2)
    step.set_train(True)
    step(*inputs(ms, poison=True))
    assert float(step.loss_scale.asnumpy()) == 512.0
    step(*inputs(ms))
    step(*inputs(ms))
    assert float(step.loss_scale.asnumpy()) == 1024.0
    # outputs read steps later (--log_interval) still hold their own step's values: the scale
    # after each step's update, as read at once above
    outputs = [step(*inputs(ms, poison=True)), step(*inputs(ms)), step(*inputs(ms))]
    assert [float(out[4].asnumpy()) for out in outputs] == [512.0, 512.0, 1024.0]
    assert [bool(out[3].asnumpy()) for out in outputs] == [False, True, True]
    assert float(step.loss_scale.asnumpy()) == 1024.0


def test_scaled_gradients_give_the_same_update(parts):
    ms, tiny_cls = parts
    from src.train.train_step import TrainStep, create_optimizer

    results = []
    for scale in (1.0, 1024.0):
        ms.set_seed(5)
        net = tiny_cls()
        step = TrainStep(net, create_optimizer(net, np.full(10, 0.1, np.float32)),
                         loss_scale=scale)
        step.set_train(True)
        step(*inputs(ms))
        results.append(weights(net))
    for name in results[0]:
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=1e-5, atol=1e-7)


def test_optimizer_reads_lr_at_global_step(parts):
    ms, tiny_cls = parts
    from src.train.train_step import TrainStep, create_optimizer

    net = tiny_cls()
    table = np.array([0.0, 0.0, 0.5], np.float32)
    optimizer = create_optimizer(net, table)
    optimizer.global_step.set_data(ms.Tensor(np.array([5], np.int32)))
    step = TrainStep(net, optimizer)
    step.set_train(True)
    before = weights(net)
    step(*inputs(ms))
    assert int(optimizer.global_step.asnumpy()[0]) == 6
    assert not np.array_equal(before["conv.weight"], weights(net)["conv.weight"])


def platform_train_step(monkeypatch, platform, **changes):
    """The detector's train step as train.py builds it on ``platform``, built (not run) on
    this CPU: MindSpore reports ``platform`` as its device target while the cells are made."""
    import mindspore as ms

    from src.config import Config
    from src.model import build_ssd
    from src.train.train_step import create_train_step

    real = ms.get_context
    monkeypatch.setattr(ms, "get_context",
                        lambda key: platform if key == "device_target" else real(key))
    config = Config(num_classes=4, **changes)
    network = build_ssd(config)
    step, plan = create_train_step(config, network, np.full(10, 0.1, np.float32), platform)
    return network, step, plan


def custom_ops(cell):
    from mindspore import ops

    found = []
    for _, sub in cell.cells_and_names():
        values = list(vars(sub).values()) + list(getattr(sub, "_primitives", {}).values())
        found += [v for v in values if isinstance(v, ops.Custom)]
    return found


@pytest.mark.parametrize("platform", ["GPU", "Ascend"])
def test_accelerator_train_steps_hold_only_mindspore_ops(graph_cpu, monkeypatch, platform):
    """No oneDNN convolution, no Custom op, no blocked layout, no fused BatchNorm or focal
    loss; MindSpore's overflow check; dynamic loss scale from 1024. GPU: fp16 through
    MindSpore's O2 (BatchNorm in fp32, convolutions fp16); Ascend: fp32 graphs (its operator
    precision mode decides the convolutions)."""
    from mindspore import nn

    from src.config import Config
    from src.model import Layers, build_ssd
    from src.model.batch_norm import BatchNormAct2d
    from src.model.layers import PLAIN
    from src.model.onednn_conv import OneDnnConv2d

    network, step, plan = platform_train_step(monkeypatch, platform)
    cells = [cell for _, cell in step.cells_and_names()]
    assert not network.layers.ours and network.layers.block == PLAIN
    assert not any(isinstance(c, OneDnnConv2d) for c in cells) and not custom_ops(step)
    norms = [c for c in cells if isinstance(c, BatchNormAct2d)]
    convs = [c for c in cells if isinstance(c, nn.Conv2d)]
    assert len(norms) == 41 and len(convs) == 63 and not any(c.fused for c in norms)
    assert not step.network.fused_focal and step.finite_op is None
    assert (step.finite_check, step.dynamic, float(step.loss_scale.asnumpy())) == (
        "mindspore", True, 1024.0)
    if platform == "GPU":
        assert (plan.precision, plan.amp_level) == ("fp16", "O2")
        assert all(c.get_flags()["fp32"] and not c.get_flags()["fp16"] for c in norms)
        assert all(c.get_flags()["fp16"] for c in convs)
        assert plan.describe() == "fp16 (amp O2), loss scale 1024 (dynamic)"
    else:
        assert (plan.precision, plan.amp_level) == ("fp32", "O0")
        assert not any(c.get_flags().get("fp16") for c in cells)
    # The parameter names (and so checkpoints) are the same on every platform.
    plain = build_ssd(Config(num_classes=4), Layers.create("mindspore"))
    assert [p.name for p in step.network.get_parameters()] == [
        "network." + p.name for p in plain.get_parameters()]


def test_precision_plans_follow_the_flags(graph_cpu, monkeypatch):
    """--amp_level O3 casts every cell (the reference's GPU cast), --loss_scale_mode static
    keeps the scale fixed, --precision fp32 on GPU trains without amp at --loss_scale; on CPU
    fp32 the scale is 1 and static, and the check is our op when our kernels run; fp16 on CPU
    is refused with our kernels (they take float32: the loss came out NaN) and allowed with
    MindSpore's layers."""
    from src.config import Config
    from src.train.precision import precision_plan

    _, step, plan = platform_train_step(monkeypatch, "GPU", amp_level="O3",
                                        loss_scale_mode="static")
    assert (plan.amp_level, plan.dynamic) == ("O3", False) and not step.dynamic
    detector = [c for _, c in step.network.network.cells_and_names()]
    assert len(detector) > 200 and all(c.get_flags()["fp16"] for c in detector)
    assert precision_plan(Config(precision="fp32"), "GPU").describe() == \
        "fp32, loss scale 1024 (dynamic)"
    cpu = precision_plan(Config(), "CPU", our_kernels=True)
    assert (cpu.precision, cpu.loss_scale, cpu.dynamic, cpu.finite_check) == (
        "fp32", 1.0, False, "ours")
    assert precision_plan(Config(), "CPU").finite_check == "concat"
    assert precision_plan(Config(loss_scale_mode="dynamic"), "CPU").dynamic
    with pytest.raises(ValueError, match="--precision fp16 on CPU: our oneDNN kernels .* "
                                         "or --conv_impl mindspore"):
        precision_plan(Config(precision="fp16"), "CPU", our_kernels=True)
    assert precision_plan(Config(precision="fp16"), "CPU").amp_level == "O2"


def test_ascend_precision_mode_is_set_explicitly(monkeypatch):
    """init_device on Ascend sets --ascend_precision_mode (the reference's fp16 convolutions
    by default) before the graph is built; CPU and GPU leave it alone."""
    import mindspore as ms

    from src.config import Config
    from src.device import init_device

    calls = []
    monkeypatch.setattr(ms, "set_device", lambda *args: calls.append(("device",) + args))
    monkeypatch.setattr(ms.device_context.ascend.op_precision, "precision_mode",
                        lambda mode: calls.append(("precision_mode", mode)))
    assert init_device("Ascend", 3, 1, Config().ascend_precision_mode) == "Ascend"
    assert calls == [("device", "Ascend", 3), ("precision_mode", "allow_fp32_to_fp16")]
    calls.clear()
    init_device("GPU", 0, 1, "force_fp16")
    assert calls == [("device", "GPU", 0)]


def test_the_gpu_plan_trains_here_in_fp16(parts):
    """The GPU plan (O2, dynamic scale, ms.amp.all_finite) on a conv + BatchNorm piece runs on
    this CPU (MindSpore's fp16 convolution): the parameters stay float32, a finite step
    updates them, an overflowing one is skipped and halves the scale."""
    ms, tiny_cls = parts
    from src.config import Config
    from src.train.precision import apply_precision, precision_plan
    from src.train.train_step import TrainStep, create_optimizer

    plan = precision_plan(Config(), "GPU")
    net = tiny_cls()
    apply_precision(net, plan)
    assert net.conv.get_flags()["fp16"] and net.bn.get_flags()["fp32"]
    step = TrainStep(net, create_optimizer(net, np.full(10, 0.1, np.float32)), plan.loss_scale,
                     dynamic=plan.dynamic, finite_check=plan.finite_check)
    step.set_train(True)
    before = weights(net)
    loss, _, _, finite, scale = step(*inputs(ms))
    assert bool(finite.asnumpy()) and np.isfinite(loss.asnumpy()) and float(scale.asnumpy()) == 1024
    after = weights(net)
    assert all(v.dtype == np.float32 for v in after.values())
    assert not np.array_equal(before["conv.weight"], after["conv.weight"])
    _, _, _, finite, _ = step(*inputs(ms, poison=True))
    assert not bool(finite.asnumpy()) and float(step.loss_scale.asnumpy()) == 512.0
    for name, value in weights(net).items():
        np.testing.assert_array_equal(value, after[name])


def test_all_reduce_fusion_groups_and_jit_level(graph_cpu, monkeypatch):
    """Data parallel on an accelerator splits the gradient all-reduce into four groups of
    about equal size (or where --all_reduce_fusion says); --jit_level reaches MindSpore."""
    import mindspore as ms

    from src.config import Config
    from src.device import init_device
    from src.model import Layers, build_ssd
    from src.train.train_step import create_train_step, fusion_splits

    network = build_ssd(Config(num_classes=4), Layers.create("mindspore"))
    params = network.trainable_params()
    splits = fusion_splits(params)
    sizes = np.array([int(np.prod(p.shape)) for p in params])
    groups = [sizes[a:b].sum() for a, b in zip([0] + splits, splits + [len(params)])]
    assert len(splits) == 3 and all(0.1 < g / sizes.sum() < 0.4 for g in groups), groups
    calls = []
    monkeypatch.setattr(ms, "set_auto_parallel_context", lambda **kw: calls.append(kw))
    lr = np.full(10, 0.1, np.float32)
    create_train_step(Config(num_classes=4), network, lr, "GPU", world=2)
    create_train_step(Config(num_classes=4, all_reduce_fusion=(29, 58, 89)), network, lr,
                      "Ascend", world=8)
    create_train_step(Config(num_classes=4), network, lr, "GPU", world=1)
    create_train_step(Config(num_classes=4), network, lr, "CPU", world=2)
    assert calls == [{"all_reduce_fusion_config": fusion_splits(params)},
                     {"all_reduce_fusion_config": [29, 58, 89]}]
    contexts = []
    monkeypatch.setattr(ms, "set_context", lambda **kw: contexts.append(kw))
    init_device("CPU", 0, 1, jit_level="O1")
    init_device("CPU", 0, 1)
    assert contexts == [{"mode": ms.GRAPH_MODE}, {"jit_config": {"jit_level": "O1"}},
                        {"mode": ms.GRAPH_MODE}]


GRAPH_PROBE = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
import tests.conftest  # noqa: F401  (the process set-up of the entry scripts)
from src.device import init_device
init_device("CPU", 0, 1)
import mindspore as ms
ms.set_context(save_graphs=True, save_graphs_path={out!r})
from tests.test_train_step import inputs, tiny_with_loss_class
from src.train.train_step import TrainStep, create_optimizer
net = tiny_with_loss_class()()
step = TrainStep(net, create_optimizer(net, np.full(10, 0.1, np.float32)), loss_scale=1024.0,
                 dynamic=True, finite_check={check!r})
step.set_train(True)
step(*inputs(ms, poison=True))
"""


@pytest.mark.parametrize("check", ["concat", "mindspore"])
def test_the_compiled_step_holds_no_control_flow(tmp_path, check):
    """The IR MindSpore saves after validation (``save_graphs``; the graph that runs) of a
    dynamic-scale step, overflow skip included, has no Switch / ConditionSwitch node: a
    tensor-valued ``if`` would put one there (Python-constant ``if``s are folded away before)."""
    import glob
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = GRAPH_PROBE.format(root=ROOT, out=str(tmp_path / "ir"), check=check)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    validated = glob.glob(str(tmp_path / "ir" / "*_validate_*.ir"))
    assert validated, sorted(p.name for p in (tmp_path / "ir").iterdir())
    text = open(validated[0]).read()
    assert "ApplyMomentum" in text and "TrainStep" in text   # the step's own graph
    assert "Switch" not in text and "ConditionGather" not in text


def test_the_lr_in_use_is_the_tables_entry_at_the_position_over_skipped_steps(parts):
    """The trainer logs lr_table[position] and --resume restores the position: the optimizer
    reads the table at the same index, skipped steps included. Table [0, 0, 0.5]: a step
    that reads index 2 (the third, after a skipped second) moves the weights; one that reads
    index 1 would not."""
    ms, tiny_cls = parts
    from src.train.train_step import TrainStep, create_optimizer

    net = tiny_cls()
    optimizer = create_optimizer(net, np.array([0.0, 0.0, 0.5], np.float32))
    step = TrainStep(net, optimizer)
    step.set_train(True)
    start = weights(net)
    for poison, moved in ((False, False), (True, False), (False, True)):
        finite = bool(step(*inputs(ms, poison=poison))[3].asnumpy())
        assert finite is not poison
        changed = any(not np.array_equal(start[k], v) for k, v in weights(net).items())
        assert changed is moved, (poison, int(optimizer.global_step.asnumpy()[0]))
    assert int(optimizer.global_step.asnumpy()[0]) == 3


def test_the_dynamic_scale_never_reaches_inf_and_never_drops_below_one(parts):
    ms, tiny_cls = parts
    from src.train.train_step import TrainStep, create_optimizer

    net = tiny_cls()
    top = float(np.finfo(np.float32).max) / 1.5
    step = TrainStep(net, create_optimizer(net, np.full(10, 0.01, np.float32)), loss_scale=top,
                     dynamic=True, scale_window=1)
    step.set_train(True)
    image, *targets = inputs(ms)
    step(ms.ops.zeros_like(image), *targets)   # zero gradients, finite at any scale: doubling
    assert float(step.loss_scale.asnumpy()) == np.float32(top)   # would overflow, it stays
    step.loss_scale.set_data(ms.Tensor(1.5, ms.float32))
    step(*inputs(ms, poison=True))
    assert float(step.loss_scale.asnumpy()) == 1.0


def test_a_fixed_scale_is_divided_out_by_the_optimizer(parts):
    """As the reference's nn.Momentum(loss_scale=...): no division in the step, the same
    update as the step's own division (scale a power of two: bit for bit)."""
    ms, tiny_cls = parts
    from src.train.train_step import TrainStep, create_optimizer

    results = []
    for folded in (1.0, 1024.0):
        ms.set_seed(5)
        net = tiny_cls()
        step = TrainStep(net, create_optimizer(net, np.full(10, 0.1, np.float32),
                                               loss_scale=folded), loss_scale=1024.0)
        assert step.unscale is (folded == 1.0)
        step.set_train(True)
        step(*inputs(ms))
        results.append(weights(net))
    for name in results[0]:
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="fixed loss scale 1024"):
        TrainStep(net, create_optimizer(net, np.full(10, 0.1, np.float32), loss_scale=1024.0),
                  loss_scale=1024.0, dynamic=True)
