"""Default boxes against the spec's section 17 numbers."""
import numpy as np
import pytest

from src.anchors import default_boxes_from_config, generate_default_boxes
from src.config import Config

EXPECTED = {
    0: (0.011667, 0.011667, 0.2, 0.2), 1: (0.011667, 0.011667, 0.141421, 0.282843),
    2: (0.011667, 0.011667, 0.282843, 0.141421), 3: (0.011667, 0.011667, 0.264575, 0.264575),
    4: (0.011667, 0.035, 0.2, 0.2), 5775: (0.875, 0.875, 0.264575, 0.264575),
    5776: (0.025, 0.025, 0.35, 0.35), 5781: (0.025, 0.025, 0.41833, 0.41833),
    7941: (0.925, 0.925, 0.41833, 0.41833), 7942: (0.05, 0.05, 0.5, 0.5),
    8541: (0.95, 0.95, 0.570088, 0.570088), 8542: (0.1, 0.1, 0.65, 0.65),
    8691: (0.9, 0.9, 0.72111, 0.72111), 8692: (0.166667, 0.166667, 0.8, 0.8),
    8727: (0.833333, 0.833333, 0.87178, 0.87178), 8728: (0.5, 0.5, 0.95, 0.95),
    8731: (0.5, 0.5, 0.974679, 0.974679),
}


@pytest.fixture(scope="module")
def boxes():
    return generate_default_boxes()


def test_count_and_dtype(boxes):
    assert boxes.cyxhw.shape == (8732, 4) and boxes.yxyx.shape == (8732, 4)
    assert boxes.cyxhw.dtype == np.float32 and boxes.yxyx.dtype == np.float32


@pytest.mark.parametrize("index", sorted(EXPECTED))
def test_spec_boxes(boxes, index):
    np.testing.assert_allclose(boxes.cyxhw[index], EXPECTED[index], atol=1e-5)


def test_column_sums_and_outside_count(boxes):
    np.testing.assert_allclose(boxes.cyxhw.astype(np.float64).sum(0),
                               (3984.5433, 3984.5433, 2589.7539, 2589.7539), rtol=1e-6)
    np.testing.assert_allclose(boxes.yxyx.astype(np.float64).sum(0),
                               (2689.6664, 2689.6664, 5279.4203, 5279.4203), rtol=1e-3)
    outside = ((boxes.yxyx < 0) | (boxes.yxyx > 1)).any(axis=1)
    assert outside.sum() == 3409
    assert boxes.yxyx.min() == pytest.approx(-0.4629, abs=1e-4)
    assert boxes.yxyx.max() == pytest.approx(1.4629, abs=1e-4)


def test_reference_steps_leave_bottom_right_uncovered_and_fixed_steps_cover_it(boxes):
    first_map = boxes.cyxhw[:5776]
    assert first_map[:, 0].max() == pytest.approx(0.875)
    fixed = generate_default_boxes(steps=(8, 16, 32, 64, 100, 300))
    assert len(fixed) == 8732
    assert fixed.cyxhw[:5776, 0].max() == pytest.approx((37 + 0.5) * 8 / 300)


def test_the_box_count_follows_from_the_anchor_settings():
    from src.config import ConfigError
    from src.config_loader import load_config

    config = load_config(feature_size=(19, 10, 5, 3, 2, 1))
    assert config.num_ssd_boxes == len(default_boxes_from_config(config)) == 2268
    assert Config().num_ssd_boxes == 8732
    with pytest.raises(ConfigError, match="num_ssd_boxes 8000 disagrees with 8732"):
        load_config(num_ssd_boxes=8000)


def test_corners_are_the_references_float64_corners_rounded_once(boxes):
    """The reference builds (cy, cx, h, w) rows as Python floats and converts each form to
    float32 separately: the corners are computed in float64 and rounded once. Corners computed
    from the float32 centre form differ from those in an ulp in about a third of the values."""
    import itertools
    import math

    rows = []
    scales = [0.2 + 0.75 * k / 5 for k in range(6)] + [1.0]
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    for k, (side, step) in enumerate(zip((38, 19, 10, 5, 3, 1), (7, 15, 30, 60, 100, 300))):
        sizes = [(scales[k], scales[k])]
        for ratio in ratios[k]:
            w, h = scales[k] * math.sqrt(ratio), scales[k] / math.sqrt(ratio)
            sizes += [(w, h), (h, w)]
        sizes.append((math.sqrt(scales[k] * scales[k + 1]),) * 2)
        for i, j in itertools.product(range(side), repeat=2):
            rows += [((i + 0.5) / (300 / step), (j + 0.5) / (300 / step), h, w)
                     for w, h in sizes]
    corners = np.array([(cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2)
                        for cy, cx, h, w in rows], dtype=np.float32)
    np.testing.assert_array_equal(boxes.cyxhw, np.array(rows, dtype=np.float32))
    np.testing.assert_array_equal(boxes.yxyx, corners)
    centre, half = boxes.cyxhw[:, :2], boxes.cyxhw[:, 2:] / np.float32(2)
    from_float32 = np.concatenate([centre - half, centre + half], axis=1)
    assert 10000 < (from_float32 != corners).sum() < 15000
