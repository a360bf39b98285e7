"""Warm-up + cosine learning rate against the spec's section 17 values; no reads past the end."""
import numpy as np
import pytest

from src.lr_schedule import TableSchedule, warmup_cosine_lr


def test_reference_values():
    lr = warmup_cosine_lr(0.001, 0.075, 7.5e-5, 2, 500, 458)
    assert len(lr) == 229000 and lr.dtype == np.float32
    expected = {0: 0.001, 1: 0.00108079, 458: 0.038, 915: 0.0749192, 916: 0.075,
                50000: 0.0667596, 114958: 0.0375375, 228999: 7.5e-5}
    for step, value in expected.items():
        assert lr[step] == pytest.approx(value, rel=1e-5), step


def test_standalone_length():
    lr = warmup_cosine_lr(0.001, 0.075, 7.5e-5, 2, 1000, 3664)
    assert len(lr) == 3664000 and lr[7328] == pytest.approx(0.075)


def test_table_schedule_clamps_at_the_end(graph_cpu):
    import mindspore as ms

    table = warmup_cosine_lr(0.001, 0.05, 5e-5, 1, 3, 4)
    schedule = TableSchedule(table)
    for step, index in ((0, 0), (5, 5), (11, 11), (12, 11), (1000, 11)):
        value = schedule(ms.Tensor(np.array([step], np.int32))).asnumpy()
        assert float(value) == pytest.approx(float(table[index])), step


def test_peak_lr_follows_the_global_batch_unless_given():
    from src.config import Config
    from src.lr_schedule import peak_lr

    assert peak_lr(Config(batch_size=32), world_size=8) == pytest.approx(0.075)
    assert peak_lr(Config(batch_size=32)) == pytest.approx(0.075 / 8)
    assert peak_lr(Config(batch_size=8, lr=0.3), world_size=8) == 0.3
