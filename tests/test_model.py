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


def batch_norm_momenta(network) -> dict:
    """name -> m of running = m * running + (1 - m) * batch (MindSpore keeps 1 - m)."""
    from mindspore import nn

    return {name: round(1.0 - cell.momentum, 6) for name, cell in network.cells_and_names()
            if isinstance(cell, nn.BatchNorm2d)}


def test_reference_batch_norm_momenta(network):
    momenta = batch_norm_momenta(network)
    heads = {name for name in momenta if name.startswith("multi_box.")}
    backbone = 1 + 2 * (3 + 4 + 6) + 2  # stem, two per block, two shortcuts
    assert len(heads) == 12 and len(momenta) == 12 + backbone
    assert {momenta[name] for name in heads} == {0.97}
    assert {momenta[name] for name in momenta if name not in heads} == {0.9}


def test_class_prior_and_batch_norm_momentum_options(graph_cpu):
    from src.model import build_ssd

    prior, classes = 0.01, 4
    network = build_ssd(Config(num_classes=classes, cls_bias_prior=prior, bn_momentum=0.99))
    assert set(batch_norm_momenta(network).values()) == {0.99}
    logit = np.log(prior / (1 - prior))
    for k, head in enumerate(network.multi_box.multi_cls_layers):
        bias = head[-1].bias.asnumpy()
        assert bias.shape == ((4, 6, 6, 6, 4, 4)[k] * classes,)
        # sigmoid(bias): background 1 - prior for every default box, each object class prior
        scores = (1 / (1 + np.exp(-bias))).reshape(-1, classes)
        np.testing.assert_allclose(scores[:, 0], 1 - prior, rtol=1e-6)
        np.testing.assert_allclose(scores[:, 1:], prior, rtol=1e-5)
        assert bias[1] == pytest.approx(logit)
    for head in network.multi_box.multi_loc_layers:
        assert not head[-1].bias.asnumpy().any()


def forward_in_training_mode(network, image):
    """(loc, logits) of a training-mode forward; the BatchNorm statistics it moves are put back
    and eval mode restored (the network is shared by this module's tests)."""
    import mindspore as ms

    statistics = {p.name: p.asnumpy().copy() for p in network.get_parameters()
                  if not p.requires_grad}
    network.set_train(True)
    try:
        loc, logits = network(image)
    finally:
        network.set_train(False)
        for p in network.get_parameters():
            if p.name in statistics:
                p.set_data(ms.Tensor(statistics[p.name]))
    return loc, logits


def random_images(batch, seed=0):
    import mindspore as ms

    return ms.Tensor(np.random.default_rng(seed).normal(size=(batch, 3, 300, 300)).astype(
        np.float32))


# 32: the reference's batch (spec 17: train batch (32, 3, 300, 300))
@pytest.mark.parametrize("batch", [2, 32])
def test_output_shapes_in_eval_mode(network, batch):
    """loc (B, 8732, 4) and sigmoid scores (B, 8732, 81) in [0, 1], float32."""
    import mindspore as ms

    network.set_train(False)
    loc, scores = network(random_images(batch))
    assert loc.shape == (batch, 8732, 4) and scores.shape == (batch, 8732, 81)
    assert loc.dtype == ms.float32 and scores.dtype == ms.float32
    values = scores.asnumpy()
    assert values.min() >= 0 and values.max() <= 1


@pytest.mark.parametrize("batch", [2, 32])
def test_output_shapes_in_training_mode(network, batch):
    """Training mode: the same shapes, but raw class logits (no sigmoid in the graph), so the
    scores are not confined to [0, 1]."""
    import mindspore as ms

    loc, logits = forward_in_training_mode(network, random_images(batch))
    assert loc.shape == (batch, 8732, 4) and logits.shape == (batch, 8732, 81)
    assert loc.dtype == ms.float32 and logits.dtype == ms.float32
    values = logits.asnumpy()
    assert np.isfinite(values).all()
    assert values.min() < 0 and values.max() > 0      # logits, not probabilities


def test_weight_decay_groups_of_the_real_detector(network):
    """create_optimizer on SSD-ResNet34: every convolution weight (backbone, extra blocks, both
    heads' depthwise and pointwise convolutions) and every head bias decays; BatchNorm gamma and
    beta (41 BatchNorm layers) do not; BatchNorm statistics are not optimised at all."""
    from src.train.train_step import create_optimizer

    optimizer = create_optimizer(network, np.full(4, 0.1, np.float32), weight_decay=4e-5)
    names = [p.name for p in optimizer.parameters]
    assert names == [p.name for p in network.trainable_params()] and len(names) == 157
    decay = {name: float(np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value))
             for name, value in zip(names, optimizer.weight_decay)}
    decayed = sorted(n for n, v in decay.items() if v == pytest.approx(4e-5))
    plain = sorted(n for n, v in decay.items() if v == 0)
    assert len(decayed) + len(plain) == 157
    assert decayed == sorted(n for n in names if n.endswith((".weight", ".bias")))
    assert plain == sorted(n for n in names if n.endswith((".gamma", ".beta")))
    assert len(decayed) == 75 and len(plain) == 82
    assert sum(n.endswith(".bias") for n in decayed) == 12          # the 12 head convolutions
    assert all("multi_box" in n for n in decayed if n.endswith(".bias"))
    assert sum(n.endswith(".weight") for n in decayed) == 63
    assert sum(n.endswith(".gamma") for n in plain) == sum(n.endswith(".beta") for n in plain) == 41
    for name in ("feature_extractor.module.conv1.weight",
                 "feature_extractor.module.layer3.0.down_sample_layer.0.weight",
                 "feature_extractor.additional_blocks.4.2.weight",
                 "multi_box.multi_cls_layers.0.0.weight", "multi_box.multi_cls_layers.0.3.weight",
                 "multi_box.multi_cls_layers.0.3.bias", "multi_box.multi_loc_layers.5.3.bias"):
        assert decay[name] == pytest.approx(4e-5), name
    for name in ("feature_extractor.module.bn1.gamma", "feature_extractor.module.bn1.beta",
                 "feature_extractor.module.layer3.0.down_sample_layer.1.gamma",
                 "multi_box.multi_loc_layers.0.1.beta"):
        assert decay[name] == 0, name
    statistics = [p.name for p in network.get_parameters() if not p.requires_grad]
    assert len(statistics) == 82 and not set(statistics) & set(names)


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
    from src.train.run_plan import create_run_plan
    from src.train.trainer import model_summary

    text = model_summary(Config(), network, create_run_plan(Config(), "CPU"), 117266, 3664,
                         "out")
    assert "12,703,542 trainable parameters, 8,732 default boxes, input 3x300x300" in text
    assert "81 classes" in text and "Device: CPU, GRAPH_MODE, fp32, loss scale 1 (static)" in text


def test_the_head_names_that_checkpoint_code_reads_are_the_built_heads(network):
    """HEAD_NAMES and CLASS_HEAD_BIAS (read from checkpoints without a network) name the built
    detector's heads: every head parameter, and the first class head's bias, whose width is
    boxes per cell of map 0 x classes."""
    from src.model.ssd import CLASS_HEAD_BIAS, HEAD_NAMES

    names = {p.name: p for p in network.get_parameters()}
    heads = [n for n in names if "multi_box" in n]
    assert heads and all(any(h in n for h in HEAD_NAMES) for n in heads)
    assert {h for h in HEAD_NAMES if any(h in n for n in heads)} == set(HEAD_NAMES)
    (bias,) = [p for n, p in names.items() if n.endswith(CLASS_HEAD_BIAS)]
    config = Config()
    assert bias.shape == (config.num_default[0] * config.class_count,)
