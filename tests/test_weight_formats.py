"""Pretrained ResNet-34 weights in the formats people have: torchvision's .pth (read without
running code), timm's .safetensors, mindcv's .ckpt; and convert_weights.py."""
import os
import pickle
import zipfile

import numpy as np
import pytest

from src.model.weight_formats import read_weights, weight_format
from src.model.weights import CheckpointError
from tests.conftest import ROOT, run_script
from tests.test_training import TORCH_BACKBONE
from tests.torch_files import save_state_dict

DATA = os.path.join(ROOT, "tests", "data")


def torchvision_state(seed=0):
    """A torchvision ResNet-34 state dict's names and shapes (the truncated part, layer4's
    first tensor and fc), random values, and the int64 counters torchvision saves."""
    rng = np.random.default_rng(seed)
    state = {name: rng.normal(size=shape).astype(np.float32) for name, shape in TORCH_BACKBONE}
    state["bn1.num_batches_tracked"] = np.array(100, np.int64)
    return state


def mindcv_name(name):
    """mindcv's ResNet-34 parameter names (mindcv/models/resnet.py): MindSpore's BatchNorm
    names, down_sample, classifier."""
    for theirs, ours in (("downsample", "down_sample"), ("fc.", "classifier."),
                         ("running_mean", "moving_mean"), ("running_var", "moving_variance")):
        name = name.replace(theirs, ours)
    if ".bn" in name or name.startswith("bn1") or "down_sample.1" in name:
        name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
    return name


def test_a_file_written_by_torch_is_read_without_torch_exactly():
    """tests/data/torch_state_dict.pth: torch 2.13's torch.save of a Parameter, a transposed
    view, a strided slice of a shared storage, a scalar, float16, bfloat16, bool and int32."""
    kind, params = read_weights(os.path.join(DATA, "torch_state_dict.pth"))
    expected = np.load(os.path.join(DATA, "torch_state_dict.npz"))
    assert kind == "torch" and sorted(params) == sorted(expected.files)
    for name in expected.files:
        assert params[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(params[name], expected[name])
    assert params["bn1.num_batches_tracked"].shape == () and params["bf16"].dtype == np.float32


def test_a_pickle_naming_any_other_global_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"conv1.weight": Payload()}, protocol=2))
    with pytest.raises(CheckpointError, match=r"evil.pth: its pickle refers to posix.system"):
        read_weights(str(path))
    assert not marker.exists()


def test_legacy_and_broken_torch_files_are_refused_with_the_reason(tmp_path):
    legacy = tmp_path / "old.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert weight_format(str(legacy)) == "torch-legacy"
    with pytest.raises(CheckpointError, match="legacy .*re-save it with torch >= 1.6"):
        read_weights(str(legacy))
    good = tmp_path / "good.pth"
    save_state_dict({"conv1.weight": np.ones((2, 2), np.float32)}, str(good))
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(tmp_path / "cut.pth", "w") as cut:
        cut.writestr("resnet34/data.pkl", source.read("resnet34/data.pkl"))
    with pytest.raises(CheckpointError, match="storage 0 is missing .*truncated download"):
        read_weights(str(tmp_path / "cut.pth"))
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match="zip.pth: cannot be read as a PyTorch archive"):
        read_weights(str(tmp_path / "zip.pth"))


@pytest.mark.parametrize("form", ["torchvision_pth", "timm_safetensors", "mindcv_ckpt"])
def test_each_format_loads_every_backbone_tensor(tmp_path, graph_cpu, form):
    import mindspore as ms

    from src.config import Config
    from src.model import build_ssd
    from src.train.pretrained import backbone_name, load_backbone, load_pretrained

    state = torchvision_state()
    if form == "torchvision_pth":
        path = str(tmp_path / "resnet34-b627a593.pth")
        save_state_dict(state, path)
    elif form == "timm_safetensors":
        from safetensors.numpy import save_file

        path = str(tmp_path / "model.safetensors")
        save_file(state, path)
    else:
        path = str(tmp_path / "resnet34_224.ckpt")
        state = {mindcv_name(n): v for n, v in state.items()
                 if not n.endswith("num_batches_tracked")}
        ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in state.items()], path)
    network = build_ssd(Config())
    loaded, skipped = load_backbone(network, path)
    backbone = [p for p in network.get_parameters() if ".module." in p.name]
    assert len(loaded) == len(backbone) == len(TORCH_BACKBONE) - 3
    said = []
    load_pretrained(Config(pre_trained=path), build_ssd(Config()), said.append)
    kind = {"torchvision_pth": "torch", "timm_safetensors": "safetensors"}.get(form, "mindspore")
    assert said[0] == (f"Backbone checkpoint {path} ({kind}): loaded {len(backbone)} tensors "
                       f"into the ResNet-34 backbone; skipped {len(skipped)}:")
    assert all("layer4" in n or "fc" in n or "classifier" in n or "num_batches" in n
               for n in skipped)
    own = {p.name: p.asnumpy() for p in network.get_parameters()}
    for name, value in state.items():
        if backbone_name(name) in own:
            np.testing.assert_array_equal(own[backbone_name(name)], value)


def test_convert_weights_writes_a_backbone_checkpoint_and_never_replaces_one(tmp_path):
    source = str(tmp_path / "resnet34.pth")
    save_state_dict(torchvision_state(1), source)
    output = tmp_path / "backbone.ckpt"
    result = run_script(["convert_weights.py", "--input", source, "--output", str(output)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Wrote {output}: {len(TORCH_BACKBONE) - 3} backbone tensors" in result.stdout
    assert "fc.weight: layer4 and the classifier" in result.stdout
    kind, params = read_weights(str(output))
    assert kind == "mindspore" and len(params) == len(TORCH_BACKBONE) - 3
    assert all(n.startswith("feature_extractor.module.") for n in params)
    before = output.read_bytes()
    again = run_script(["convert_weights.py", "--input", source, "--output", str(output)])
    assert again.returncode == 1 and "exists: not replaced" in again.stderr
    assert output.read_bytes() == before and sorted(os.listdir(tmp_path)) == [
        "backbone.ckpt", "resnet34.pth"]
