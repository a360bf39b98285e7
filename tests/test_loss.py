"""Focal + smooth-L1 loss against the spec's section 17 scalars; zero positives guarded."""
import numpy as np
import pytest

from src.loss import SSDWithLossCell, sigmoid_focal_loss, smooth_l1
from tests.conftest import needs_x86_kernels

FUSED = [False, pytest.param(True, marks=needs_x86_kernels)]


@pytest.fixture(scope="module")
def ms(graph_cpu):
    import mindspore

    return mindspore


@pytest.mark.parametrize("logit, target, expected", [
    (0.0, 1, 0.1299651), (0.0, 0, 0.0433217), (2.0, 1, 0.0013527), (2.0, 0, 0.4125195),
    (-3.0, 0, 2.73e-5), (-3.0, 1, 2.0747103)])
def test_focal_scalars(ms, logit, target, expected):
    value = sigmoid_focal_loss(ms.Tensor([logit], ms.float32), ms.Tensor([float(target)],
                                                                         ms.float32))
    assert float(value.asnumpy()[0]) == pytest.approx(expected, rel=2e-3, abs=1e-8)


def test_smooth_l1(ms):
    values = smooth_l1(ms.Tensor([0.5, 2.0, -1.0], ms.float32)).asnumpy()
    np.testing.assert_allclose(values, [0.125, 1.5, 0.5], rtol=1e-6)


class ConstantNet:
    """Stand-in network returning fixed predictions."""

    def __init__(self, ms, loc, cls):
        from mindspore import nn

        class Net(nn.Cell):
            def __init__(self):
                super().__init__()
                self.loc = ms.Tensor(loc)
                self.cls = ms.Tensor(cls)

            def construct(self, x):
                return self.loc + x.sum() * 0, self.cls + x.sum() * 0

        self.cell = Net()


@pytest.mark.parametrize("fused", FUSED)
def test_zero_predictions_total(ms, fused):
    batch, anchors, classes = 2, 8732, 81
    rng = np.random.default_rng(0)
    gt_loc = rng.normal(0, 1.5, (batch, anchors, 4)).astype(np.float32)
    label = np.zeros((batch, anchors), np.int32)
    label[0, :30] = 5
    label[1, 100:110] = 80
    num_match = np.array([[30], [10]], np.int32)
    net = ConstantNet(ms, np.zeros((batch, anchors, 4), np.float32),
                      np.zeros((batch, anchors, classes), np.float32)).cell
    loss, cls, loc = SSDWithLossCell(net, fused_focal=fused)(
                                          ms.Tensor(np.zeros((1,), np.float32)),
                                          ms.Tensor(gt_loc), ms.Tensor(label),
                                          ms.Tensor(num_match))
    diff = np.abs(gt_loc[label > 0])
    expected_loc = np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).sum()
    expected = (batch * anchors * 3.595701 + expected_loc) / 40
    assert float(loss.asnumpy()) == pytest.approx(expected, rel=1e-4)
    assert float(cls.asnumpy()) == pytest.approx(batch * anchors * 3.595701 / 40, rel=1e-4)
    assert float(loc.asnumpy()) == pytest.approx(expected_loc / 40, rel=1e-4)


def test_zero_positives_is_finite(ms):
    net = ConstantNet(ms, np.zeros((1, 8732, 4), np.float32),
                      np.zeros((1, 8732, 81), np.float32)).cell
    loss, cls, loc = SSDWithLossCell(net)(ms.Tensor(np.zeros((1,), np.float32)),
                                          ms.Tensor(np.zeros((1, 8732, 4), np.float32)),
                                          ms.Tensor(np.zeros((1, 8732), np.int32)),
                                          ms.Tensor(np.zeros((1, 1), np.int32)))
    assert np.isfinite(float(loss.asnumpy()))
    assert float(loss.asnumpy()) == pytest.approx(8732 * 3.595701, rel=1e-4)
    assert float(loc.asnumpy()) == 0


@pytest.mark.parametrize("fused", FUSED)
def test_ignored_anchors_add_nothing(ms, fused):
    net = ConstantNet(ms, np.zeros((1, 8732, 4), np.float32),
                      np.zeros((1, 8732, 81), np.float32)).cell
    label = np.zeros((1, 8732), np.int32)
    label[0, :10] = 3
    label[0, 10:110] = -1
    loss, cls, loc = SSDWithLossCell(net, fused_focal=fused)(
                                          ms.Tensor(np.zeros((1,), np.float32)),
                                          ms.Tensor(np.zeros((1, 8732, 4), np.float32)),
                                          ms.Tensor(label), ms.Tensor(np.array([[10]], np.int32)))
    assert float(cls.asnumpy()) == pytest.approx((8732 - 100) * 3.595701 / 10, rel=1e-4)


@needs_x86_kernels
def test_fused_focal_loss_matches_the_composed_one_and_its_gradient(ms):
    """Our fused op against the elementwise formula (autodiff) on varied logits and labels."""
    from mindspore import nn, ops

    from src.loss import fused_focal_loss_sum

    rng = np.random.default_rng(3)
    logits = (rng.normal(0, 3, (2, 500, 81))).astype(np.float32)
    labels = rng.integers(-1, 81, (2, 500)).astype(np.int32)
    labels[:, :300] = 0                                  # mostly background, as in training
    settings = ms.Tensor([2.0, 0.75], ms.float32)
    fused = fused_focal_loss_sum()

    class Composed(nn.Cell):
        def construct(self, x, y):
            targets = ops.one_hot(ops.maximum(y, 0), 81, ops.ones((), ms.float32),
                                  ops.zeros((), ms.float32))
            valid = ops.expand_dims(ops.cast(y >= 0, ms.float32), -1)
            return ops.reduce_sum(sigmoid_focal_loss(x, targets) * valid) * 3.0

    class Fused(nn.Cell):
        def construct(self, x, y):
            return fused(x, y, settings).reshape(()) * 3.0

    results = []
    for cell in (Composed(), Fused()):
        value, grad = ms.value_and_grad(cell, grad_position=0)(ms.Tensor(logits),
                                                               ms.Tensor(labels))
        results.append((float(value.asnumpy()), grad.asnumpy()))
    (want, want_grad), (got, got_grad) = results
    assert got == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    assert not got_grad[labels < 0].any() and np.abs(got_grad).max() > 0
