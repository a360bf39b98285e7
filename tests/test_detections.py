"""The one post-processing path: thresholds, class-aware greedy NMS (numpy and the kernel
library's, equal), caps, COCO records."""
import numpy as np
import pytest

from src.detections import PostProcessor, batched_nms
from tests.conftest import needs_x86_kernels


def reference_nms(boxes, scores, threshold, max_boxes):
    """The reference's per-class greedy NMS with "+1" pixel areas, written out (its order of
    candidates, ``scores.argsort()[::-1]``, equal scores included)."""
    y1, x1, y2, x2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if len(keep) >= max_boxes:
            break
        w = np.maximum(0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        overlap = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[np.nonzero(overlap <= threshold)[0] + 1]
    return keep


def test_hand_checked_image():
    """Three anchors, two classes: known boxes and scores in, known detections out."""
    boxes = np.array([[0.0, 0.0, 0.5, 0.5],      # A
                      [0.0, 0.0, 0.5, 0.45],     # B: IoU with A 0.9 -> suppressed in class 1
                      [0.5, 0.5, 1.0, 1.0]], np.float32)
    scores = np.array([[0.0, 0.9, 0.05],
                       [0.0, 0.8, 0.3],
                       [0.9, 0.2, 0.1]], np.float32)  # column 0 (background) never counts
    post = PostProcessor(category_ids=[0, 7, 9], min_score=0.1, nms_threshold=0.6,
                         max_per_class=100, plus_one=True)
    store = post.new_store()
    assert post.process_batch([42], boxes[None], scores[None], [[200.0, 100.0]], store) == 3
    records = store.records()
    assert [(r["category_id"], r["score"]) for r in records] == [(7, 0.9), (9, 0.3), (7, 0.2)]
    assert records[0]["bbox"] == [0.0, 0.0, 50.0, 100.0]
    assert records[1]["bbox"] == [0.0, 0.0, 45.0, 100.0]
    assert records[2]["bbox"] == [50.0, 100.0, 50.0, 100.0]
    assert all(r["image_id"] == 42 for r in records)


def test_equals_reference_per_class_greedy():
    rng = np.random.default_rng(0)
    for trial in range(25):
        n, classes = int(rng.integers(1, 2000)), int(rng.integers(1, 8))
        yx = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([yx, yx + rng.uniform(1, 150, (n, 2))], 1)
        scores = rng.uniform(0, 1, n)
        labels = rng.integers(1, classes + 1, n)
        cap = int(rng.integers(1, 120))
        kept = batched_nms(boxes, scores, labels, 0.6, cap, plus_one=True)
        expected = []
        for c in np.unique(labels):
            index = np.nonzero(labels == c)[0]
            expected += list(index[reference_nms(boxes[index], scores[index], 0.6, cap)])
        assert sorted(kept.tolist()) == sorted(expected), trial
        assert np.all(np.diff(scores[kept]) <= 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equal_scores_are_visited_and_kept_in_the_references_order(dtype):
    """Scores drawn from a few values (ties everywhere, as sigmoid outputs saturate): each
    class keeps exactly the reference's boxes, in the reference's order; boxes overlap, so the
    order of tied candidates decides which of them survive."""
    rng = np.random.default_rng(5)
    differs_from_stable = 0
    for trial in range(30):
        n, classes = int(rng.integers(2, 600)), int(rng.integers(1, 4))
        yx = rng.uniform(0, 100, (n, 2))
        boxes = np.concatenate([yx, yx + rng.uniform(20, 60, (n, 2))], 1)
        scores = rng.choice([0.3, 0.5, 0.7, 0.9], n).astype(dtype)
        labels = rng.integers(1, classes + 1, n)
        cap = int(rng.integers(1, 50))
        kept = batched_nms(boxes, scores, labels, 0.6, cap, plus_one=True)
        for c in np.unique(labels):
            index = np.nonzero(labels == c)[0]
            expected = index[reference_nms(boxes[index], scores[index], 0.6, cap)]
            assert kept[labels[kept] == c].tolist() == expected.tolist(), trial
            stable = np.argsort(-scores[index], kind="stable")
            differs_from_stable += not np.array_equal(stable, scores[index].argsort()[::-1])
    assert differs_from_stable > 10   # the data does tell the two orders apart


def test_caps_and_thresholds():
    anchors = 50
    rng = np.random.default_rng(2)
    yx = rng.uniform(0, 0.9, (anchors, 2))
    boxes = np.concatenate([yx, yx + 0.01], 1).astype(np.float32)   # tiny, never overlapping much
    scores = np.zeros((anchors, 3), np.float32)
    scores[:, 1] = np.linspace(0.11, 0.9, anchors)
    scores[:, 2] = 0.1                                                  # not strictly above 0.1
    post = PostProcessor([0, 1, 2], min_score=0.1, nms_threshold=0.6, max_per_class=7)
    found, found_scores, classes = post.detect(boxes, scores, (1000, 1000))
    assert len(found) == 7 and set(classes) == {1}
    assert found_scores[0] == pytest.approx(0.9)
    post = PostProcessor([0, 1, 2], min_score=0.05, max_per_class=100, max_per_image=10)
    assert len(post.detect(boxes, scores, (1000, 1000))[0]) == 10


def test_nothing_above_threshold():
    post = PostProcessor([0, 1])
    store = post.new_store()
    post.process_batch([1], np.zeros((1, 8, 4), np.float32),
                       np.full((1, 8, 2), 0.05, np.float32), [[10, 10]], store)
    assert store.records() == [] and store.image_ids == [1]


def test_nms_without_plus_one_uses_plain_pixel_areas():
    """Two 2x2-pixel boxes one pixel apart: IoU 2/6 = 0.333 as areas are, 6/12 = 0.5 with the
    reference's "+1" pixel widths (3x3 boxes overlapping 3x2)."""
    boxes = np.array([[0, 0, 2, 2], [0, 1, 2, 3]], np.float64)
    scores, labels = np.array([0.9, 0.8]), np.array([1, 1])

    def kept(threshold, plus_one):
        return batched_nms(boxes, scores, labels, threshold, 100, plus_one=plus_one).tolist()

    assert kept(0.4, plus_one=False) == [0, 1] and kept(0.4, plus_one=True) == [0]
    assert kept(0.34, plus_one=False) == [0, 1] and kept(0.33, plus_one=False) == [0]
    assert kept(0.5, plus_one=True) == [0, 1] and kept(0.49, plus_one=True) == [0]


def test_nms_plus_one_false_in_the_config_keeps_what_plus_one_suppresses():
    """Through the config (nms_threshold 0.6): 3.5 x 5-pixel boxes 1 pixel apart have IoU
    2.5/4.5 = 0.556 without "+1" (both kept) and 3.5/5.5 = 0.636 with it (one suppressed)."""
    from src.config_loader import load_config

    boxes = np.array([[0.0, 0.0, 0.05, 0.035], [0.0, 0.01, 0.05, 0.045]], np.float32)
    scores = np.array([[0.0, 0.9], [0.0, 0.8]], np.float32)
    plain = PostProcessor.from_config(load_config(nms_plus_one=False), [0, 1])
    reference = PostProcessor.from_config(load_config(), [0, 1])
    assert plain.plus_one is False and reference.plus_one is True
    found, found_scores, _ = plain.detect(boxes, scores, (100, 100))
    assert found_scores.tolist() == pytest.approx([0.9, 0.8])
    np.testing.assert_allclose(found, [[0, 0, 5, 3.5], [0, 1, 5, 4.5]], atol=1e-4)
    found, found_scores, _ = reference.detect(boxes, scores, (100, 100))
    assert found_scores.tolist() == pytest.approx([0.9])


def network_like_outputs(rng, anchors, classes, scores="uniform"):
    """Decoded-looking boxes (clipped corners) and scores of a kind: uniform, sigmoid of an
    untrained model (all above 0.1), or a few values with ties, at and just above 0.1."""
    centre = rng.uniform(0, 1, (anchors, 2))
    size = rng.uniform(0.01, 0.6, (anchors, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, 1)
    if scores == "untrained":
        values = 1 / (1 + np.exp(-rng.normal(0, 0.2, (anchors, classes))))
    elif scores == "ties":
        threshold = np.float32(0.1)
        values = rng.choice([threshold, np.nextafter(threshold, np.float32(1)), 0.3, 0.5],
                            (anchors, classes))
    else:
        values = rng.uniform(0, 1, (anchors, classes))
    return boxes.astype(np.float32), values.astype(np.float32)


@needs_x86_kernels
@pytest.mark.parametrize("kind", ["uniform", "untrained", "ties"])
def test_kernel_nms_equals_numpy_nms_bit_for_bit(kind):
    rng = np.random.default_rng({"uniform": 1, "untrained": 2, "ties": 3}[kind])
    for trial in range(12):
        anchors, classes = int(rng.integers(1, 1500)), int(rng.integers(2, 12))
        boxes, scores = network_like_outputs(rng, anchors, classes, kind)
        settings = {"max_per_class": int(rng.integers(1, 120)),
                    "nms_threshold": float(rng.choice([0.3, 0.6, 0.9])),
                    "plus_one": bool(trial % 2), "max_per_image": int(rng.choice([0, 5]))}
        kernel = PostProcessor(list(range(classes)), use_kernel=True, **settings)
        plain = PostProcessor(list(range(classes)), use_kernel=False, **settings)
        assert kernel.kernel is not None and plain.kernel is None
        hw = (float(rng.integers(1, 1000)), float(rng.integers(1, 1000)))
        got, want = kernel.detect(boxes, scores, hw), plain.detect(boxes, scores, hw)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and np.array_equal(a, b), (trial, settings)


@needs_x86_kernels
def test_kernel_nms_of_a_full_81_class_image_keeps_100_per_class_as_numpy():
    """The worst case of evaluation: every anchor of every class above the threshold."""
    rng = np.random.default_rng(4)
    boxes, scores = network_like_outputs(rng, 8732, 81, "untrained")
    got = PostProcessor(list(range(81)), use_kernel=True).detect(boxes, scores, (480., 640.))
    want = PostProcessor(list(range(81)), use_kernel=False).detect(boxes, scores, (480., 640.))
    assert len(got[0]) == 8000 and np.bincount(got[2]).tolist() == [0] + [100] * 80
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


@needs_x86_kernels
def test_kernel_nms_hands_tied_scores_to_the_references_order():
    """The kernel cannot reproduce numpy's argsort order of equal scores: where candidates it
    reaches tie (here two overlapping boxes of score 0.8, the first two it visits; or a third
    box tied with the last it reaches) it returns None, and ``detect`` gives batched_nms'
    result; without ties among them (ties beyond where a full class stops do not count) it
    answers itself."""
    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.45], [0.6, 0.6, 0.9, 0.9]],
                     np.float32)
    for column, cap, tied in (([0.8, 0.7, 0.6], 1, False), ([0.8, 0.8, 0.6], 1, True),
                              ([0.9, 0.7, 0.7], 1, False), ([0.9, 0.7, 0.7], 3, True)):
        post = PostProcessor([0, 1], max_per_class=cap, use_kernel=True)
        plain = PostProcessor([0, 1], max_per_class=cap, use_kernel=False)
        scores = np.stack([np.zeros(3), column], 1).astype(np.float32)
        assert (post._kernel_nms(boxes, scores, 100.0, 100.0) is None) == tied, column
        got, want = post.detect(boxes, scores, (100.0, 100.0)), plain.detect(
            boxes, scores, (100.0, 100.0))
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
