"""Our oneDNN convolution: for every convolution the model has, outputs and gradients equal to
nn.Conv2d's; the whole detector gives the same outputs with either; the ISA cap follows."""
import contextlib
import os
import subprocess

import numpy as np
import pytest

from src.config import Config
from src.cpu import cpu_info
from src.device import KERNEL_LIBRARY
from tests.conftest import ROOT, needs_x86_kernels
from tests.test_batch_norm import BLOCKS, to_blocked, to_plain

pytestmark = needs_x86_kernels


def test_kernel_library_is_built_from_the_current_sources():
    from src.device import kernel_library_status

    assert os.path.isfile(KERNEL_LIBRARY), "make (or bash src/kernels/build.sh) builds it"
    assert kernel_library_status() == "current"


def test_a_library_from_other_sources_is_not_used(tmp_path):
    from src.device import kernel_library_status, kernel_sources_digest

    sources, library = tmp_path / "kernels", tmp_path / "lib.so"
    sources.mkdir()
    (sources / "a.cc").write_text("int a;")
    assert kernel_library_status(str(library), str(sources)) == "missing"
    library.write_bytes(b"ELF")
    assert kernel_library_status(str(library), str(sources)) == "stale"     # no record
    (tmp_path / "lib.so.sha256").write_text(kernel_sources_digest(str(sources)) + "\n")
    assert kernel_library_status(str(library), str(sources)) == "current"
    (sources / "a.cc").write_text("int a, b;")                              # sources changed
    assert kernel_library_status(str(library), str(sources)) == "stale"


@pytest.mark.parametrize("source", sorted(
    name for name in os.listdir(os.path.join(ROOT, "src", "kernels"))
    if name.endswith((".cc", ".h")) or name == "build.sh"))
def test_make_rebuilds_the_library_when_any_kernel_source_changes(source):
    """make -n -W FILE: what make would run were FILE just edited (nothing is touched)."""
    result = subprocess.run(["make", "-n", "-W", f"src/kernels/{source}",
                             "build/kernels/libssd_cpu_kernels.so"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "src/kernels/build.sh" in result.stdout, result.stdout + result.stderr


def test_the_source_digest_covers_build_script_and_every_source(tmp_path):
    from src.device import kernel_sources_digest

    for name, text in (("a.cc", "int a;"), ("b.h", "#pragma once"), ("build.sh", "-O3")):
        (tmp_path / name).write_text(text)
    before = kernel_sources_digest(str(tmp_path))
    for name in ("a.cc", "b.h", "build.sh"):
        (tmp_path / name).write_text((tmp_path / name).read_text() + " ")
        assert kernel_sources_digest(str(tmp_path)) != before, name
        before = kernel_sources_digest(str(tmp_path))
    (tmp_path / "notes.txt").write_text("not a source")
    assert kernel_sources_digest(str(tmp_path)) == before


def geometries():
    """Every distinct convolution of the detector: (in, out, kernel, stride, pad, group, bias)."""
    import mindspore as ms  # noqa: F401

    from src.model import build_ssd
    from src.model.onednn_conv import OneDnnConv2d

    found = set()
    for _, cell in build_ssd(Config(conv_impl="onednn")).cells_and_names():
        if isinstance(cell, OneDnnConv2d):
            g = cell.geometry.asnumpy().tolist()
            found.add((cell.in_channels, cell.out_channels, cell.kernel_size[0], g[0],
                       tuple(g[2:6]), cell.group, bool(g[7])))
    return sorted(found)


class Loss:
    def __init__(self, conv):
        from mindspore import nn

        class Cell(nn.Cell):
            def __init__(self):
                super().__init__()
                self.conv = conv

            def construct(self, x, target):
                return (self.conv(x) * target).sum()

        self.cell = Cell()


def compare_with_nn_conv2d(compute_dtype, rtol):
    """Outputs and gradients of OneDnnConv2d vs nn.Conv2d for small copies of every model
    convolution; returns our outputs."""
    import mindspore as ms
    from mindspore import Tensor, nn

    from src.model.onednn_conv import OneDnnConv2d

    shapes = geometries()
    assert len(shapes) >= 10
    rng = np.random.default_rng(0)
    outputs = []
    for cin, cout, k, stride, pads, group, bias in shapes:
        cin, cout = min(cin, 32), min(cout, 48)      # small copies of each geometry
        if group > 1:
            cin = cout = group = min(group, 32)
        args = dict(pad_mode="pad", padding=pads) if any(pads) else dict(pad_mode="valid")
        ref = nn.Conv2d(cin, cout, k, stride, group=group, has_bias=bias,
                        bias_init="normal" if bias else None, **args)
        # and, where the channels allow, reading and writing either blocked layout
        layouts = [(False, False, None)] + [
            (cin % b == 0, cout % b == 0, b) for b in BLOCKS
            if compute_dtype == "float32" and (cin % b == 0 or cout % b == 0)]
        size = max(k + 2, 13)
        x = rng.normal(size=(2, cin, size, size)).astype(np.float32)
        y_ref = ref(Tensor(x)).asnumpy()
        target = rng.normal(size=y_ref.shape).astype(np.float32)
        fn = ms.value_and_grad(Loss(ref).cell, grad_position=0, weights=ref.trainable_params())
        _, (dx, dws) = fn(Tensor(x), Tensor(target))
        want_grads = [dx.asnumpy()] + [d.asnumpy() for d in dws]
        for blocked_input, blocked_output, block in layouts:
            ours = OneDnnConv2d(cin, cout, k, stride, group=group, has_bias=bias,
                                compute_dtype=compute_dtype, blocked_input=blocked_input,
                                blocked_output=blocked_output, block=block, **args)
            ours.weight.set_data(ref.weight.data.copy())
            if bias:
                ours.bias.set_data(ref.bias.data.copy())
            into = (lambda a, block=block: to_blocked(a, block)) if blocked_input else (lambda a: a)
            out_of = ((lambda a, block=block: to_plain(a, block)) if blocked_output
                      else (lambda a: a))
            y = out_of(ours(Tensor(into(x))).asnumpy())
            assert y.shape == y_ref.shape and y.dtype == np.float32
            np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=rtol * np.abs(y_ref).max())
            if not (blocked_input or blocked_output):
                outputs.append(y)
            fn = ms.value_and_grad(Loss(ours).cell, grad_position=0,
                                   weights=ours.trainable_params())
            target_ours = to_blocked(target, block) if blocked_output else target
            _, (dx, dws) = fn(Tensor(into(x)), Tensor(target_ours))
            got_grads = [(to_plain(dx.asnumpy(), block) if blocked_input else dx.asnumpy())] + [
                d.asnumpy() for d in dws]
            for want, got in zip(want_grads, got_grads):
                assert got.dtype == np.float32
                np.testing.assert_allclose(got, want, rtol=rtol,
                                           atol=rtol * np.abs(want).max(), err_msg=str(
                                               (cin, cout, k, stride, pads, group, bias,
                                                blocked_input, blocked_output, block)))
    return outputs


def test_every_model_convolution_matches_nn_conv2d(graph_cpu):
    compare_with_nn_conv2d("float32", rtol=1e-4)


@pytest.mark.skipif(not cpu_info().native_bf16, reason="needs native bfloat16 arithmetic "
                    f"(AVX512-BF16 or AMX), missing here: {cpu_info().describe()}")
def test_bfloat16_compute_is_close_to_float32_and_really_rounds(graph_cpu):
    # bfloat16 keeps 8 significant bits: products round at ~0.4 %, sums stay float32.
    bf16 = compare_with_nn_conv2d("bfloat16", rtol=3e-2)
    fp32 = compare_with_nn_conv2d("float32", rtol=1e-4)
    differing = [not np.array_equal(a, b) for a, b in zip(bf16, fp32)]
    assert all(differing), "bfloat16 outputs equal float32 ones: the bf16 path did not run"


def test_layer_without_input_grad_gives_zero_dx_and_the_same_weight_grads(graph_cpu):
    import mindspore as ms
    from mindspore import Tensor, nn

    from src.model.onednn_conv import OneDnnConv2d

    ref = nn.Conv2d(3, 8, 7, 2, pad_mode="pad", padding=3)
    ours = OneDnnConv2d(3, 8, 7, 2, pad_mode="pad", padding=3, input_grad=False)
    ours.weight.set_data(ref.weight.data.copy())
    rng = np.random.default_rng(2)
    x = Tensor(rng.normal(size=(2, 3, 20, 20)).astype(np.float32))
    target = Tensor(rng.normal(size=(2, 8, 10, 10)).astype(np.float32))
    grads = []
    for conv in (ref, ours):
        fn = ms.value_and_grad(Loss(conv).cell, grad_position=0, weights=conv.trainable_params())
        _, (dx, dws) = fn(x, target)
        grads.append((dx.asnumpy(), dws[0].asnumpy()))
    assert np.abs(grads[0][0]).max() > 0 and not grads[1][0].any()
    np.testing.assert_allclose(grads[1][1], grads[0][1], rtol=1e-4,
                               atol=1e-4 * np.abs(grads[0][1]).max())


def test_inference_copies_fuse_the_activation_and_keep_their_own_weights(graph_cpu):
    import mindspore as ms
    from mindspore import nn

    from src.model.onednn_conv import OneDnnConv2d

    rng = np.random.default_rng(5)
    x = ms.Tensor(rng.normal(0, 20, size=(2, 16, 9, 9)).astype(np.float32))
    ref = nn.Conv2d(16, 32, 3, pad_mode="pad", padding=1, has_bias=True, bias_init="normal")
    want = ref(x).asnumpy()
    layers = []
    for sign in (1.0, -1.0):                      # same shape, different weights
        layer = OneDnnConv2d(16, 32, 3, pad_mode="pad", padding=1, has_bias=True)
        layer.weight.set_data(ms.Tensor(sign * ref.weight.asnumpy()))
        layer.bias.set_data(ms.Tensor(sign * ref.bias.asnumpy()))
        layers.append(layer)
    copies = {(sign, act): layer.for_inference(activation=act)
              for sign, layer in zip((1.0, -1.0), layers) for act in (None, "relu", "relu6")}
    assert all(c.constant_weights for c in copies.values())
    for _ in range(2):                            # second round: the kept weights
        for (sign, act), copy in copies.items():
            expected = sign * want
            if act:
                expected = np.clip(expected, 0, 6 if act == "relu6" else None)
            np.testing.assert_allclose(copy(x).asnumpy(), expected, rtol=1e-4,
                                       atol=1e-4 * np.abs(want).max(), err_msg=str((sign, act)))
    assert (want > 6).any() and (want < 0).any()  # both clips were exercised
    residual = rng.normal(0, 5, size=want.shape).astype(np.float32)
    summed = layers[0].for_inference(activation="relu", residual_sum=True)
    np.testing.assert_allclose(summed(x, ms.Tensor(residual)).asnumpy(),
                               np.maximum(want + residual, 0), rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match="already applies its activation"):
        copies[(1.0, "relu")].for_inference(activation="relu")


def test_bfloat16_needs_our_convolutions():
    from src.model.layers import Layers

    with pytest.raises(ValueError, match="conv_dtype bfloat16 needs our oneDNN"):
        Layers.create("mindspore", "bfloat16")
    with pytest.raises(ValueError, match="expected one of float32, bfloat16"):
        Layers.create("onednn", "float16")


def test_whole_detector_same_outputs_either_way(graph_cpu):
    import mindspore as ms

    from src.anchors import generate_default_boxes
    from src.model import SsdInferWithDecoder, build_ssd, conv_description

    config = Config(num_classes=4)
    ours = build_ssd(config.replace(conv_impl="onednn"))
    uncapped = "ONEDNN_MAX_CPU_ISA" not in os.environ   # then MindSpore's convolutions warn
    with pytest.warns(UserWarning, match="35x slower") if uncapped else contextlib.nullcontext():
        theirs = build_ssd(config.replace(conv_impl="mindspore"))
    assert conv_description(ours).startswith("oneDNN (ours)") and conv_description(theirs) == \
        "MindSpore's"
    ms.load_param_into_net(theirs, {p.name: p for p in ours.get_parameters()})
    image = ms.Tensor(np.random.default_rng(1).normal(size=(1, 3, 300, 300)).astype(
        np.float32))
    outputs = []
    for network in (ours, theirs):
        net = SsdInferWithDecoder(network, generate_default_boxes().cyxhw)
        net.set_train(False)
        outputs.append([o.asnumpy() for o in net(image)])
    for got, want in zip(*outputs):
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("block", BLOCKS)
def test_feature_maps_whose_channels_cannot_be_blocked_stay_nchw(graph_cpu, block):
    import mindspore as ms

    from src.model.layers import Layers
    from src.model.ssd import SsdResnet34

    config = Config(num_classes=3, extras_out_channels=(256, 196, 512, 76, 256, 36))
    nets = []
    for blocked in (True, False):
        # direct everywhere: this compares layouts (Winograd needs the blocked one)
        layers = Layers.create("onednn", "float32", blocked=blocked, block=block,
                               algorithm="direct")
        nets.append(SsdResnet34(config.num_classes, config.extras_out_channels, layers=layers))
    convs = [c for _, c in nets[0].cells_and_names() if hasattr(c, "blocked_input")]
    assert any(c.blocked_input for c in convs) and not all(c.blocked_input for c in convs)
    for param, reference in zip(nets[1].get_parameters(), nets[0].get_parameters()):
        param.set_data(ms.Tensor(reference.asnumpy()))
    image = ms.Tensor(np.random.default_rng(6).normal(size=(1, 3, 300, 300)).astype(np.float32))
    outputs = []
    for net in nets:
        net.set_train(False)
        outputs.append([o.asnumpy() for o in net(image)])
    for got, want in zip(*outputs):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_batch_norm_folded_into_our_convolutions_gives_the_same_detections(graph_cpu):
    import mindspore as ms
    from mindspore import nn

    from src.model import build_inference_network
    from src.model.fold import fold_batch_norm

    config = Config(num_classes=4)
    plain = build_inference_network(config, fold_bn=False)
    rng = np.random.default_rng(4)
    for _, cell in plain.cells_and_names():           # statistics a trained model might have
        if isinstance(cell, nn.BatchNorm2d):
            n = cell.gamma.shape[0]
            for param, values in ((cell.gamma, rng.uniform(0.5, 1.5, n)),
                                  (cell.beta, rng.normal(0, 0.1, n)),
                                  (cell.moving_mean, rng.normal(0, 0.1, n)),
                                  (cell.moving_variance, rng.uniform(0.5, 2.0, n))):
                param.set_data(ms.Tensor(values.astype(np.float32)))
    folded = build_inference_network(config, fold_bn=False)
    ms.load_param_into_net(folded, {p.name: p for p in plain.get_parameters()})
    assert fold_batch_norm(folded.network) == 41
    assert not any(isinstance(c, nn.BatchNorm2d) for _, c in folded.cells_and_names())
    image = ms.Tensor(rng.normal(size=(1, 3, 300, 300)).astype(np.float32))
    for want, got in zip(plain(image), folded(image)):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), atol=1e-5)
    plain.set_train(True)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(plain)


@pytest.mark.parametrize("block", BLOCKS)
def test_winograd_forward_and_input_gradient_match_nn_conv2d(graph_cpu, block):
    """Winograd F(4x4, 3x3): outputs, input and weight gradients as nn.Conv2d's (sizes that are
    and are not multiples of the 4x4 tile; with a bias the weight gradient is direct), rounded
    differently from direct convolution
    (so it really ran), and inference copies with the bias, a residual and ReLU6 fused."""
    import mindspore as ms
    from mindspore import Tensor, nn

    from src.model.onednn_conv import OneDnnConv2d

    rng = np.random.default_rng(7)
    for cin, cout, h, w, bias in ((32, 48, 13, 13, True), (16, 32, 8, 11, False)):
        ref = nn.Conv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=bias,
                        bias_init="normal" if bias else None)
        x = rng.normal(size=(2, cin, h, w)).astype(np.float32)
        y_ref = ref(Tensor(x)).asnumpy()
        target = rng.normal(size=y_ref.shape).astype(np.float32)
        fn = ms.value_and_grad(Loss(ref).cell, grad_position=0, weights=ref.trainable_params())
        _, (dx, dws) = fn(Tensor(x), Tensor(target))
        want_grads = [dx.asnumpy()] + [d.asnumpy() for d in dws]
        outputs = {}
        for algorithm in ("direct", "winograd"):
            ours = OneDnnConv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=bias,
                                blocked_input=True, blocked_output=True, block=block,
                                algorithm=algorithm)
            ours.weight.set_data(ref.weight.data.copy())
            if bias:
                ours.bias.set_data(ref.bias.data.copy())
            y = to_plain(ours(Tensor(to_blocked(x, block))).asnumpy(), block)
            np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * np.abs(y_ref).max())
            outputs[algorithm] = y
            fn = ms.value_and_grad(Loss(ours).cell, grad_position=0,
                                   weights=ours.trainable_params())
            _, (dx, dws) = fn(Tensor(to_blocked(x, block)), Tensor(to_blocked(target, block)))
            got_grads = [to_plain(dx.asnumpy(), block)] + [d.asnumpy() for d in dws]
            for want, got in zip(want_grads, got_grads):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                           err_msg=str((cin, cout, h, w, algorithm)))
            if algorithm == "winograd":
                residual = rng.normal(0, 3, size=y_ref.shape).astype(np.float32)
                scale = rng.uniform(0.5, 2, size=cout)
                shift = rng.normal(size=cout)
                copy = ours.for_inference(scale, shift, "relu6", residual_sum=True)
                assert copy.algorithm == "winograd"
                want = np.clip(y_ref * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
                               + residual, 0, 6)
                for _ in range(2):  # second call: the kept transformed weights
                    got = to_plain(copy(Tensor(to_blocked(x, block)),
                                        Tensor(to_blocked(residual, block))).asnumpy(), block)
                    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * 6)
                assert (want == 0).any() and (want == 6).any()
        assert not np.array_equal(outputs["direct"], outputs["winograd"])


# Feature-map side of each 3x3 stride-1 layer of the 300x300 detector, by its input channels:
# layer1 75x75, layer2 and layer3 38x38.
MODEL_FEATURE_SIDE = {64: 75, 128: 38, 256: 38}


@pytest.mark.parametrize("block", BLOCKS)
def test_winograd_matches_direct_for_every_3x3_layer_of_the_model(graph_cpu, block):
    """Every 3x3 stride-1 geometry of the detector at its full channels and feature-map size:
    Winograd's output, input gradient and weight gradient within 1e-4 (relative to the largest
    value) of direct convolution's, and not equal to them (so Winograd ran for all three)."""
    import mindspore as ms
    from mindspore import Tensor

    from src.model.onednn_conv import OneDnnConv2d

    layers = [g for g in geometries() if g[2:6] == (3, 1, (1, 1, 1, 1), 1)]
    assert sorted((cin, cout) for cin, cout, *_ in layers) == [
        (64, 64), (128, 128), (128, 256), (256, 256)]
    rng = np.random.default_rng(5)
    for cin, cout, *_, bias in layers:
        side = MODEL_FEATURE_SIDE[cin]
        x = Tensor(to_blocked(rng.normal(size=(1, cin, side, side)).astype(np.float32), block))
        target = Tensor(to_blocked(rng.normal(size=(1, cout, side, side)).astype(np.float32),
                                   block))
        results, weights = {}, None
        for algorithm in ("direct", "winograd"):
            conv = OneDnnConv2d(cin, cout, 3, pad_mode="pad", padding=1, has_bias=bias,
                                blocked_input=True, blocked_output=True, block=block,
                                algorithm=algorithm)
            assert conv.algorithm == algorithm
            if weights is None:
                weights = conv.weight.data.copy()
            conv.weight.set_data(weights.copy())
            fn = ms.value_and_grad(Loss(conv).cell, grad_position=0,
                                   weights=conv.trainable_params())
            _, (dx, (dw,)) = fn(x, target)
            results[algorithm] = [conv(x).asnumpy(), dx.asnumpy(), dw.asnumpy()]
        for name, want, got in zip(("output", "input gradient", "weight gradient"),
                                   results["direct"], results["winograd"]):
            where = f"{name} of {cin} -> {cout} channels at {side}x{side}, block {block}"
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                       err_msg=where)
            assert not np.array_equal(got, want), where


def test_winograd_runs_where_the_config_says(graph_cpu):
    from src.model import build_ssd, conv_description
    from src.model.onednn_conv import WINOGRAD_MIN_CHANNELS, OneDnnConv2d

    counts = {}
    for algorithm in ("auto", "direct", "winograd"):
        network = build_ssd(Config(num_classes=4, conv_algorithm=algorithm, conv_impl="onednn"))
        layers = [c for _, c in network.cells_and_names() if isinstance(c, OneDnnConv2d)]
        chosen = [c for c in layers if c.algorithm == "winograd"]
        assert all(c.winograd_possible() for c in chosen)
        counts[algorithm] = len(chosen)
        if algorithm == "auto":
            assert chosen and all(min(c.in_channels, c.out_channels) >= WINOGRAD_MIN_CHANNELS
                                  for c in chosen)
            assert all(c in chosen for c in layers if c.winograd_possible()
                       and min(c.in_channels, c.out_channels) >= WINOGRAD_MIN_CHANNELS)
            assert f"Winograd in {len(chosen)} of {len(layers)}" in \
                conv_description(network)
    assert counts["direct"] == 0 < counts["auto"] < counts["winograd"]
    for stride, blocked in ((2, True), (1, False)):  # geometries it cannot compute: direct
        conv = OneDnnConv2d(16, 16, 3, stride, pad_mode="pad", padding=1, blocked_input=blocked,
                            blocked_output=blocked, algorithm="winograd")
        assert conv.algorithm == "direct" and conv.geometry.asnumpy()[16] == 0
    with pytest.raises(ValueError, match="expected one of auto, direct, winograd"):
        OneDnnConv2d(16, 16, 3, pad_mode="pad", padding=1, algorithm="fast")


def test_the_geometry_fields_are_the_kernels_in_its_order():
    """ConvGeometry (Python) and Geometry (C++) name the same int32 fields in the same order: a
    field added to one side only would shift every later value."""
    import re

    from src.model.onednn_conv import ConvGeometry

    source = open(os.path.join(ROOT, "src", "kernels", "onednn_conv.cc")).read()
    body = re.search(r"struct Geometry \{\s*int32_t ([^;]+);", source).group(1)
    assert [name.strip() for name in body.split(",")] == list(ConvGeometry._fields)
    assert f"sizeof(Geometry) == {len(ConvGeometry._fields)} * sizeof(int32_t)" in source
