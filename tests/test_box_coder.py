"""Matching, encoding and decoding against the spec's section 17 numbers and its loop."""
import numpy as np
import pytest

from src.anchors import generate_default_boxes
from src.box_coder import BoxCoder, iou_matrix


@pytest.fixture(scope="module")
def coder():
    return BoxCoder(generate_default_boxes(), 0.5, (0.1, 0.2))


def reference_match(coder, gt):
    """The reference's sequential loop over ground truths, written out literally."""
    best = np.zeros(coder.num_anchors, np.float32)
    assigned = np.full(coder.num_anchors, -1)
    for g, box in enumerate(gt):
        iou = iou_matrix(box[None, :4], coder.anchors_yxyx)[0]
        iou[np.argmax(iou)] = 2.0
        take = (iou > 0.5) & (iou > best)
        best[take] = iou[take]
        assigned[take] = g
    return assigned


def test_single_box(coder):
    loc, label, num = coder.encode_targets([[0.2, 0.3, 0.6, 0.8, 5]])
    matched, iou = coder.match(np.array([[0.2, 0.3, 0.6, 0.8]]))
    assert num.tolist() == [50] and (label > 0).sum() == 50 and set(label[label > 0]) == {5}
    assert iou_matrix(np.array([[0.2, 0.3, 0.6, 0.8]]), coder.anchors_yxyx)[0].argmax() == 8152
    np.testing.assert_allclose(coder.anchors_cyxhw[8152], (0.35, 0.55, 0.5, 0.5), atol=1e-6)
    np.testing.assert_allclose(loc[8152], (1.0, 0.0, -1.115717, 0.0), atol=1e-5)
    assert loc.dtype == np.float32 and label.dtype == np.int32 and num.dtype == np.int32


def test_corner_box(coder):
    loc, label, num = coder.encode_targets([[0, 0, 0.2, 0.2, 1]])
    raw = iou_matrix(np.array([[0, 0, 0.2, 0.2]]), coder.anchors_yxyx)[0]
    assert raw.argmax() == 624 and raw[624] == pytest.approx(0.905896, abs=1e-5)
    assert num.tolist() == [64]
    np.testing.assert_allclose(loc[624], (-0.25, -0.25, 0, 0), atol=1e-5)


def test_two_boxes_forced_match(coder):
    """42 default boxes tie (IoU 0.25 to float32 precision) for the small box's forced match;
    with the reference's corners (float64, rounded once) the first of them by IoU is #2366,
    which the reference picks. Its encoding, from spec 5's formulas with #2366 =
    (cy, cx, h, w) (0.3616667, 0.5016667, 0.2828427, 0.1414214) and the box's centre (0.45,
    0.5), size 0.1: ((0.45 - cy) / h / 0.1, (0.5 - cx) / w / 0.1, ln(0.1 / h) / 0.2,
    ln(0.1 / w) / 0.2)."""
    gt = np.array([[0.1, 0.1, 0.9, 0.9, 3], [0.4, 0.45, 0.5, 0.55, 7]], np.float32)
    loc, label, num = coder.encode_targets(gt)
    assert num.tolist() == [21]
    assert (label == 3).sum() == 20 and (label == 7).sum() == 1 and label[2366] == 7
    raw = iou_matrix(gt[1:, :4], coder.anchors_yxyx)[0]
    assert raw.argmax() == 2366 and raw[2366] == pytest.approx(0.25, abs=1e-5)
    assert (np.abs(raw - raw[2366]) < 1e-6).sum() == 42
    np.testing.assert_allclose(coder.anchors_cyxhw[2366],
                               (0.3616667, 0.5016667, 0.2828427, 0.1414214), atol=1e-6)
    np.testing.assert_allclose(loc[2366], (3.123054, -0.117851, -5.198604, -1.732868),
                               atol=1e-5)
    assert label[8708] == 3
    np.testing.assert_allclose(loc[8708], 0, atol=1e-5)


def test_zero_boxes_is_all_background(coder):
    loc, label, num = coder.encode_targets(np.zeros((0, 5), np.float32))
    assert num.tolist() == [0] and not label.any() and not loc.any()
    assert loc.shape == (8732, 4) and label.shape == (8732,)


def test_vectorised_match_equals_reference_loop(coder):
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = rng.integers(1, 12)
        yx = rng.uniform(0, 0.8, (n, 2))
        hw = rng.uniform(0.02, 0.5, (n, 2))
        gt = np.concatenate([yx, np.minimum(yx + hw, 1)], axis=1).astype(np.float32)
        if rng.uniform() < 0.3:
            gt[-1] = gt[0]
        matched, _ = coder.match(gt)
        np.testing.assert_array_equal(matched, reference_match(coder, gt))


def test_decode_zero_offsets_gives_clipped_anchors(coder):
    """Decoding works in float32 from the centre form, as the reference's does: its corners are
    those of the float32 centre form, within an ulp of the matching's float64-rounded ones."""
    centre, half = coder.anchors_cyxhw[:, :2], coder.anchors_cyxhw[:, 2:] / np.float32(2)
    decoded = coder.decode(np.zeros((8732, 4)))
    np.testing.assert_array_equal(decoded, np.clip(np.concatenate([centre - half, centre + half],
                                                                  axis=1), 0, 1))
    np.testing.assert_allclose(decoded, np.clip(coder.anchors_yxyx, 0, 1), rtol=0, atol=6e-8)


def test_decode_inverts_encode(coder):
    rng = np.random.default_rng(1)
    yx = rng.uniform(0.05, 0.5, (8732, 2))
    boxes = np.concatenate([yx, yx + rng.uniform(0.05, 0.45, (8732, 2))], 1).astype(np.float32)
    np.testing.assert_allclose(coder.decode(coder.encode(boxes)), boxes, atol=2e-6)


def test_ignore_regions_mark_anchors_minus_one(coder):
    gt = np.array([[0.1, 0.1, 0.5, 0.5, 2], [0.5, 0.5, 0.9, 0.9, -4]], np.float32)
    loc, label, num = coder.encode_targets(gt)
    alone_loc, alone_label, alone_num = coder.encode_targets(gt[:1])
    assert num[0] == alone_num[0] and np.array_equal(label > 0, alone_label > 0)
    np.testing.assert_array_equal(loc, alone_loc)
    ignored = label == -1
    overlap = iou_matrix(gt[1:, :4], coder.anchors_yxyx)[0]
    assert ignored.sum() > 0 and np.array_equal(ignored, (overlap > 0.5) & (label <= 0))


def test_single_box_best_anchor_8152_overlaps_it_with_iou_0_8(coder):
    """Spec 17: GT (0.2, 0.3, 0.6, 0.8)'s best default box #8152 has IoU 0.8 with it; the
    match reports that forced best box with IoU 2.0 (spec 5)."""
    gt = np.array([[0.2, 0.3, 0.6, 0.8]], np.float32)
    raw = iou_matrix(gt, coder.anchors_yxyx)[0]
    assert raw.argmax() == 8152 and raw[8152] == pytest.approx(0.8, abs=1e-6)
    matched, iou = coder.match(gt)
    assert matched[8152] == 0 and iou[8152] == 2.0
    others = np.arange(coder.num_anchors) != 8152
    np.testing.assert_allclose(iou[others], raw[others], atol=1e-7)


def test_corner_box_best_anchor_624_is_the_default_box_0_105_0_105_0_2_0_2(coder):
    """Spec 17: GT (0, 0, 0.2, 0.2)'s best default box #624 is (cy, cx, h, w) =
    (0.105, 0.105, 0.2, 0.2): map 0, row 4, column 4, ((4 + 0.5) * 7 / 300), first shape."""
    raw = iou_matrix(np.array([[0, 0, 0.2, 0.2]]), coder.anchors_yxyx)[0]
    assert raw.argmax() == 624
    np.testing.assert_allclose(coder.anchors_cyxhw[624], (0.105, 0.105, 0.2, 0.2), atol=1e-6)
    np.testing.assert_allclose(coder.anchors_yxyx[624], (0.005, 0.005, 0.205, 0.205), atol=1e-6)


def test_big_box_best_anchor_8708_has_iou_1(coder):
    """Spec 17: the big box (0.1, 0.1, 0.9, 0.9)'s best default box is #8708,
    (0.5, 0.5, 0.8, 0.8), the same box (IoU 1.0), so it encodes to zeros."""
    gt = np.array([[0.1, 0.1, 0.9, 0.9]], np.float32)
    raw = iou_matrix(gt, coder.anchors_yxyx)[0]
    assert raw.argmax() == 8708 and raw[8708] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(coder.anchors_cyxhw[8708], (0.5, 0.5, 0.8, 0.8), atol=1e-6)
    assert np.sort(raw)[-2] < 0.9                  # no other default box comes close
    np.testing.assert_allclose(coder.encode(np.repeat(gt, coder.num_anchors, 0))[8708], 0,
                               atol=1e-5)
