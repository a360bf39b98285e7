"""The training-curve picture at the length of a real run: thinned per-step lines, epoch means
over every step."""
import os

import numpy as np

from src.visualize import PLOT_POINTS, epoch_means, plot_training_curves, thinned


def test_thinned_keeps_short_curves_and_averages_long_ones():
    x = np.arange(100)
    assert thinned(x, x * 2.0)[0] is x
    x = np.arange(1, 10_001)
    values = np.sin(x / 500.0)
    tx, tv = thinned(x, values, points=300)
    assert len(tx) == len(tv) == 300
    assert np.all(np.diff(tx) > 0) and x[0] <= tx[0] and tx[-1] <= x[-1]
    np.testing.assert_allclose(tx[0], x[:33].mean())          # the first run's mean
    np.testing.assert_allclose(tv[-1], values[-33:].mean(), atol=0.01)
    assert abs(tv.mean() - values.mean()) < 1e-3


def test_epoch_means_use_every_step():
    rng = np.random.default_rng(0)
    epochs = np.repeat([3, 4, 5], [7, 11, 5])           # a resumed run starts past epoch 1
    x = np.arange(len(epochs)) + 20
    values = rng.normal(size=len(epochs))
    ends, means = epoch_means(epochs, x, values)
    for i, epoch in enumerate((3, 4, 5)):
        assert ends[i] == x[epochs == epoch].max()
        np.testing.assert_allclose(means[i], values[epochs == epoch].mean())


def test_a_long_run_is_drawn(tmp_path):
    steps = 3 * PLOT_POINTS
    rows = [{"kind": "step", "epoch": 1 + i // PLOT_POINTS, "global_step": i + 1,
             "loss": 5.0 - i / steps, "cls_loss": 3.0, "loc_loss": 2.0 - i / steps,
             "lr": 0.01, "finite": True} for i in range(steps)]
    rows.append({"kind": "eval", "epoch": 3, "mAP": 0.1, "AP50": 0.2})
    path = plot_training_curves(rows, str(tmp_path / "curves.png"))
    assert path == str(tmp_path / "curves.png") and os.path.getsize(path) > 10_000
    assert plot_training_curves([{"kind": "epoch"}], str(tmp_path / "none.png")) is None
