"""The reference network: parameter count, output shapes, names, initialisation, decoder."""
import numpy as np
import pytest

from src.anchors import generate_default_boxes
from src.box_coder import BoxCoder
from src.config import Config


@pytest.fixture(scope="module")
def network(graph_cpu):
    from src.model import build_ssd

    return build_ssd(Config())


def test_trainable_parameter_count(network):
    from src.model import count_trainable_params

    assert count_trainable_params(network) == 12_703_542
    statistics = sum(int(np.prod(p.shape)) for p in network.get_parameters()
                     if not p.requires_grad)
    assert statistics == 18_048


def test_reference_parameter_names(network):
    names = {p.name for p in network.get_parameters()}
    for name in ("feature_extractor.module.conv1.weight",
                 "feature_extractor.module.layer1.0.conv1.weight",
                 "feature_extractor.module.layer3.0.down_sample_layer.0.weight",
                 "feature_extractor.additional_blocks.4.2.weight",
                 "multi_box.multi_cls_layers.0.1.moving_mean",
                 "multi_box.multi_loc_layers.5.3.bias"):
        assert name in names


def test_initialisation(network):
    for p in network.trainable_params():
        value = p.asnumpy()
        if "bias" in p.name or "beta" in p.name:
            assert not value.any(), p.name
        elif "gamma" in p.name:
            assert np.all(value == 1), p.name
        else:
            assert np.abs(value).max() <= 0.04 + 1e-7, p.name
    big = network.feature_extractor.module.layer3[1].conv1.weight.asnumpy()
    assert big.std() == pytest.approx(0.02 * 0.8796, rel=0.02)


def test_output_shapes_train_and_eval(network):
    import mindspore as ms

    image = ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, 300, 300)).astype(np.float32))
    network.set_train(False)
    loc, scores = network(image)
    assert loc.shape == (2, 8732, 4) and scores.shape == (2, 8732, 81)
    assert loc.dtype == ms.float32 and scores.dtype == ms.float32
    values = scores.asnumpy()
    assert values.min() >= 0 and values.max() <= 1


def test_feature_map_sizes(network):
    import mindspore as ms

    features = network.feature_extractor(ms.Tensor(np.zeros((1, 3, 300, 300), np.float32)))
    assert [tuple(f.shape[1:]) for f in features] == [
        (256, 38, 38), (512, 19, 19), (512, 10, 10), (256, 5, 5), (256, 3, 3), (256, 1, 1)]


def test_in_graph_decoder_matches_numpy(network):
    import mindspore as ms
    from src.model import SsdInferWithDecoder

    anchors = generate_default_boxes()
    net = SsdInferWithDecoder(network, anchors.cyxhw)
    net.set_train(False)
    image = ms.Tensor(np.random.default_rng(1).normal(size=(1, 3, 300, 300)).astype(np.float32))
    boxes, scores = net(image)
    network.set_train(False)
    loc, raw_scores = network(image)
    np.testing.assert_allclose(boxes.asnumpy(), BoxCoder(anchors).decode(loc.asnumpy()),
                               atol=1e-6)
    np.testing.assert_allclose(scores.asnumpy(), raw_scores.asnumpy())


def test_summary_states_the_reference_numbers(network):
    from src.engine.trainer import model_summary

    text = model_summary(Config(), network, "CPU", "fp32", 1.0, 117266, 3664, "out")
    assert "12,703,542 trainable parameters, 8,732 default boxes, input 3x300x300" in text
    assert "81 classes" in text and "Device: CPU" in text
