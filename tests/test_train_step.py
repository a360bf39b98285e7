"""Train step: weight-decay groups, skipped non-finite updates, dynamic loss scale, lr by step."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def parts(graph_cpu):
    import mindspore as ms
    from mindspore import nn, ops

    class TinyWithLoss(nn.Cell):
        """Conv + BN 'network' with the (loss, cls_loss, loc_loss) outputs of SSDWithLossCell."""

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

    return ms, TinyWithLoss


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
    from src.engine.train_step import create_optimizer

    net = tiny_cls()
    optimizer = create_optimizer(net, np.full(10, 0.1, np.float32), weight_decay=4e-5)
    names = [p.name for p in optimizer.parameters]
    assert names == [p.name for p in net.trainable_params()]
    decay = {name: float(np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value))
             for name, value in zip(names, optimizer.weight_decay)}
    assert decay["conv.weight"] == pytest.approx(4e-5) and decay["conv.bias"] == pytest.approx(4e-5)
    assert decay["bn.gamma"] == 0 and decay["bn.beta"] == 0


@pytest.mark.parametrize("fused_finite", [False, True], ids=["mindspore_check", "our_op"])
def test_finite_step_updates_and_poisoned_step_is_skipped(parts, fused_finite):
    ms, tiny_cls = parts
    from src.engine.train_step import TrainStep, create_optimizer

    net = tiny_cls()
    step = TrainStep(net, create_optimizer(net, np.full(10, 0.1, np.float32)), loss_scale=1.0,
                     fused_finite=fused_finite)
    assert (step.finite_op is not None) == fused_finite
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


def test_our_finite_check_finds_one_bad_value_anywhere(graph_cpu):
    import mindspore as ms

    from src.engine.train_step import fused_all_finite

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
    from src.engine.train_step import TrainStep, create_optimizer

    net = tiny_cls()
    step = TrainStep(net, create_optimizer(net, np.full(10, 0.01, np.float32)), loss_scale=1024.0,
                     dynamic=True, scale_window=2)
    step.set_train(True)
    step(*inputs(ms, poison=True))
    assert float(step.loss_scale.asnumpy()) == 512.0
    step(*inputs(ms))
    step(*inputs(ms))
    assert float(step.loss_scale.asnumpy()) == 1024.0


def test_scaled_gradients_give_the_same_update(parts):
    ms, tiny_cls = parts
    from src.engine.train_step import TrainStep, create_optimizer

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
    from src.engine.train_step import TrainStep, create_optimizer

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
