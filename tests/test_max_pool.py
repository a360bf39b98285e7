"""Our max-pool on the blocked layout equals MindSpore's 'same' max-pool on NCHW, gradient
included, for both blocks."""
import numpy as np
import pytest

from tests.conftest import needs_x86_kernels
from tests.test_batch_norm import BLOCKS, to_blocked, to_plain


@needs_x86_kernels
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("size", [(150, 150), (7, 10)])
def test_blocked_max_pool_equals_mindspores(graph_cpu, block, size):
    import mindspore as ms
    from mindspore import nn

    from src.model.max_pool import BlockedMaxPool2d

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 32, *size)).astype(np.float32)
    ours, theirs = BlockedMaxPool2d(32, 3, 2, block), nn.MaxPool2d(3, 2, pad_mode="same")
    want = theirs(ms.Tensor(x)).asnumpy()
    got = to_plain(ours(ms.Tensor(to_blocked(x, block))).asnumpy(), block)
    assert got.shape == want.shape == (2, 32, -(-size[0] // 2), -(-size[1] // 2))
    np.testing.assert_array_equal(got, want)
    dy = rng.normal(size=want.shape).astype(np.float32)
    plain_dy, blocked_dy = ms.Tensor(dy), ms.Tensor(to_blocked(dy, block))

    def theirs_weighted(t):
        return (theirs(t) * plain_dy).sum()

    def ours_weighted(t):
        return (ours(t) * blocked_dy).sum()

    grad_theirs = ms.grad(theirs_weighted)(ms.Tensor(x)).asnumpy()
    grad_ours = ms.grad(ours_weighted)(ms.Tensor(to_blocked(x, block)))
    np.testing.assert_allclose(to_plain(grad_ours.asnumpy(), block), grad_theirs, rtol=1e-6,
                               atol=1e-6)
    assert (grad_theirs != 0).mean() > 0.1


def test_plain_layout_keeps_mindspores_pool():
    from mindspore import nn

    from src.model.max_pool import BlockedMaxPool2d, max_pool_same

    assert isinstance(max_pool_same(64, 3, 2, 0), nn.MaxPool2d)
    assert isinstance(max_pool_same(64, 3, 2, 8), BlockedMaxPool2d)
    with pytest.raises(ValueError, match="divisible by 16, got 24"):
        BlockedMaxPool2d(24, 3, 2, 16)
