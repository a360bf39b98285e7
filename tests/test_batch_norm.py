"""Our fused BatchNorm (+ residual add + activation) and the blocked activation layout: outputs,
gradients and running statistics equal to MindSpore's BatchNorm2d, add and ReLU/ReLU6, in NCHW
and in the blocked layout, with batch and with running statistics; a piece of the detector
gives the same outputs and gradients whether it keeps activations blocked or not."""
import numpy as np
import pytest

from tests.conftest import needs_x86_kernels

pytestmark = needs_x86_kernels

CHANNELS = 32


BLOCKS = (8, 16)  # AVX2's and AVX-512's; oneDNN reorders both on any x86 CPU


def to_blocked(array, block=16):
    """(N, C, H, W) NCHW -> the same values in aBcd<block>b order (N, C/block, H, W, block),
    same shape."""
    n, c, h, w = array.shape
    return np.ascontiguousarray(
        array.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2)).reshape(array.shape)


def to_plain(array, block=16):
    n, c, h, w = array.shape
    return np.ascontiguousarray(
        array.reshape(n, c // block, h, w, block).transpose(0, 1, 4, 2, 3)).reshape(array.shape)


def run_batch_norm(activation, residual, frozen, fused, block, data):
    """Loss sum(y * dy) of one BatchNormAct2d on data, its tensors in the blocked layout of
    ``block`` (0: NCHW): (loss, dx, dresidual, dgamma, dbeta, running mean, running variance),
    arrays in NCHW order."""
    import mindspore as ms
    from mindspore import Tensor, nn

    from src.model.batch_norm import BatchNormAct2d

    bn = BatchNormAct2d(CHANNELS, eps=1e-3, momentum=0.97, activation=activation, fused=fused,
                        block=block)
    for param, name in ((bn.gamma, "gamma"), (bn.beta, "beta"), (bn.moving_mean, "mean"),
                        (bn.moving_variance, "var")):
        param.set_data(Tensor(data[name]))
    if frozen:
        bn.use_batch_statistics = False
    bn.set_train(True)

    class Loss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.bn = bn

        def construct(self, x, r, dy):
            y = self.bn(x, r) if residual else self.bn(x)
            return (y * dy).sum()

    layout, back = ((lambda a: to_blocked(a, block), lambda a: to_plain(a, block)) if block
                    else (lambda a: a, lambda a: a))
    grad = ms.value_and_grad(Loss(), grad_position=(0, 1), weights=[bn.gamma, bn.beta])
    loss, ((dx, dr), (dgamma, dbeta)) = grad(*(Tensor(layout(data[k])) for k in ("x", "r", "dy")))
    return [loss.asnumpy(), back(dx.asnumpy()), back(dr.asnumpy()), dgamma.asnumpy(),
            dbeta.asnumpy(), bn.moving_mean.asnumpy(), bn.moving_variance.asnumpy()]


@pytest.mark.parametrize("activation, residual", [(None, False), ("relu", True),
                                                  ("relu6", False)])
@pytest.mark.parametrize("frozen", [False, True], ids=["batch_stats", "running_stats"])
def test_fused_batch_norm_equals_mindspores_in_both_layouts(graph_cpu, activation, residual,
                                                            frozen):
    rng = np.random.default_rng(7)
    shape = (3, CHANNELS, 7, 6)
    data = {"x": rng.normal(1, 3, shape), "r": rng.normal(0, 1, shape),
            "dy": rng.normal(0, 1, shape), "gamma": rng.normal(1, 0.5, CHANNELS),
            "beta": np.linspace(-1, 4, CHANNELS), "mean": np.linspace(-1, 1, CHANNELS),
            "var": np.linspace(0.5, 3, CHANNELS)}
    data = {k: v.astype(np.float32) for k, v in data.items()}
    want = run_batch_norm(activation, residual, frozen, False, 0, data)
    assert np.abs(want[1]).max() > 0.1                      # the gradient reaches the input
    if residual:                                            # the ReLU masks some of it
        assert 0.1 < (want[2] == 0).mean() < 0.9
    for block in (0, *BLOCKS):
        got = run_batch_norm(activation, residual, frozen, True, block, data)
        for name, g, w in zip(("loss", "dx", "dresidual", "dgamma", "dbeta", "running mean",
                               "running variance"), got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(),
                                       err_msg=f"{name}, block={block}")


@pytest.mark.parametrize("block", BLOCKS)
def test_reorder_ops_and_blocked_channel_checks(graph_cpu, block):
    import mindspore as ms

    from src.model.batch_norm import BatchNormAct2d
    from src.model.layout import ToBlocked
    from src.model.onednn_conv import OneDnnConv2d

    rng = np.random.default_rng(0)
    x, weights = (rng.normal(size=(2, 32, 5, 3)).astype(np.float32) for _ in range(2))
    layer = ToBlocked(32, block)
    np.testing.assert_array_equal(layer(ms.Tensor(x)).asnumpy(), to_blocked(x, block))
    # d/dx sum(to_blocked(x) * w) = to_plain(w): the gradient goes back to NCHW
    sensitivity = ms.Tensor(weights)

    def weighted_sum(t):
        return (layer(t) * sensitivity).sum()

    dx = ms.grad(weighted_sum)(ms.Tensor(x))
    np.testing.assert_array_equal(dx.asnumpy(), to_plain(weights, block))
    x12 = x[:, :12].copy()
    np.testing.assert_array_equal(ToBlocked(12, 0)(ms.Tensor(x12)).asnumpy(), x12)
    with pytest.raises(ValueError, match=f"divisible by {block}, got 12"):
        ToBlocked(12, block)
    with pytest.raises(ValueError, match=f"divisible by {block}, got 12"):
        OneDnnConv2d(16, 12, 1, blocked_output=True, block=block)
    with pytest.raises(ValueError, match="needs the fused kernel"):
        BatchNormAct2d(32, block=block)


def detector_piece(impl, block):
    """Stem output -> blocked region (two ResNet blocks, one with a 1x1 shortcut) -> a
    separable head back to NCHW, built with ``impl`` convolutions, blocked by ``block``."""
    from mindspore import nn

    from src.model.layers import Layers
    from src.model.layout import ToBlocked
    from src.model.resnet34 import BasicBlock
    from src.model.ssd import separable_head

    layers = Layers.create(impl, "float32", blocked=bool(block), block=block or None)
    return nn.SequentialCell([ToBlocked(32, layers.block), BasicBlock(layers, 32, 64, 2),
                              BasicBlock(layers, 64, 64), separable_head(layers, 64, 24)])


def test_a_blocked_detector_piece_equals_nchw_and_mindspore(graph_cpu):
    import mindspore as ms
    from mindspore import nn, ops

    class Loss(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.nhwc = getattr(net[-1][-1], "nhwc_output", False)  # ours: (N, H, W, C)

        def construct(self, x, dy):
            y = self.net(x)
            if self.nhwc:
                y = ops.transpose(y, (0, 3, 1, 2))
            return (y * dy).sum()

    rng = np.random.default_rng(3)
    x = ms.Tensor(rng.normal(size=(2, 32, 12, 12)).astype(np.float32))
    dy = ms.Tensor(rng.normal(size=(2, 24, 6, 6)).astype(np.float32))
    # All built and given the same parameters before any runs (a network built after another
    # has run could start from that one's running statistics: seen with MindSpore 2.10).
    nets = [detector_piece(impl, block) for impl, block in
            (("mindspore", 0), ("onednn", 0), ("onednn", 8), ("onednn", 16))]
    for net in nets[1:]:
        for param, reference in zip(net.get_parameters(), nets[0].get_parameters()):
            assert param.name == reference.name
            param.set_data(ms.Tensor(reference.asnumpy()))
    results = []
    for net in nets:
        net.set_train(True)
        value, (dx, grads) = ms.value_and_grad(Loss(net), 0, net.trainable_params())(x, dy)
        stats = [p.asnumpy() for p in net.get_parameters() if "moving" in p.name]
        assert len(grads) == 20 and len(stats) == 12        # 6 convolutions, 6 BatchNorms
        results.append([value.asnumpy(), dx.asnumpy(), *[g.asnumpy() for g in grads], *stats])
    assert np.abs(results[0][-2]).max() > 1e-3               # running statistics did move
    for got in results[1:]:
        for g, w in zip(got, results[0]):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
