"""Weight files in the formats people have, read as {name: numpy array}, without running code.

- PyTorch's ``.pth`` / ``.pt`` zip archive (torchvision's ImageNet ResNet-34): with torch
  installed, ``torch.load(weights_only=True)``; otherwise our reader, which unpickles
  ``data.pkl`` allowing only what a state dict needs (``OrderedDict``, tensor rebuilding,
  storage types) and refuses any other global, naming it: never a plain pickle load;
- ``.safetensors`` (timm, Hugging Face), by the ``safetensors`` package's numpy side;
- MindSpore ``.ckpt`` (ours, the reference's, mindcv's), by ``mindspore.load_checkpoint``.

The format is told by the file's first bytes, not its name.
"""
import collections
import os
import pickle
import struct
import sys
import zipfile

import numpy as np

from src.model.weights import CheckpointError, read_checkpoint

# torch's storage classes as they appear in its pickles -> numpy dtypes (bfloat16: raw bits)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2: a (copied) numpy view of a storage."""
    itemsize = storage.dtype.itemsize
    if not size:
        return np.array(storage[offset])
    view = np.lib.stride_tricks.as_strided(storage[offset:], tuple(size),
                                           tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *_):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch zip archive's data.pkl, allowing only a state dict's parts."""

    _ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
                ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str, swap: bool):
        super().__init__(file)
        self.archive, self.prefix, self.path, self.swap = archive, prefix, path, swap
        self.bfloat16: set = set()

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"{self.path}: its pickle refers to {module}.{name}, which a file "
                              "of weights does not need; not loaded (only tensors are read "
                              "without torch; with torch installed, torch.load(weights_only="
                              "True) decides)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path}: an unexpected storage record {pid!r}")
        _, storage_type, key, _, _ = pid
        try:
            data = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError as exc:
            raise CheckpointError(f"{self.path}: storage {key} is missing from the archive "
                                  "(a truncated download?)") from exc
        array = np.frombuffer(data, storage_type.dtype)
        if self.swap:
            array = array.byteswap()
        if storage_type.name == "BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


def _read_torch_archive(path: str) -> dict:
    """State dict of a torch zip archive, by ``torch.load(weights_only=True)`` if torch is
    installed, else by ``_StateDictUnpickler``."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:   # torch raises many kinds; the message says which
            raise CheckpointError(f"{path}: torch.load(weights_only=True) refused it: "
                                  f"{exc}") from exc
        state = _state_dict(state, path)
        return {name: value.detach().float().numpy() if value.dtype == torch.bfloat16
                else value.detach().numpy() for name, value in state.items()
                if isinstance(value, torch.Tensor)}
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: a zip file but not a PyTorch archive (expected "
                                      f"one data.pkl, found {len(pickles)})")
            prefix = pickles[0][:-len("data.pkl")]
            names = set(archive.namelist())
            order = archive.read(prefix + "byteorder").decode() \
                if prefix + "byteorder" in names else "little"
            with archive.open(pickles[0]) as file:
                state = _StateDictUnpickler(file, archive, prefix, path,
                                            swap=order != sys.byteorder).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot be read as a PyTorch archive: {exc}") from exc
    state = _state_dict(state, path)
    return {name: value for name, value in state.items() if isinstance(value, np.ndarray)}


def _state_dict(state, path: str) -> dict:
    """The state dict of a saved object: itself, or its 'state_dict' / 'model' entry (what
    training scripts save)."""
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                return state[key]
        return state
    raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")


def _read_safetensors(path: str) -> dict:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as exc:  # safetensors' own errors name the problem
        raise CheckpointError(f"{path}: cannot be read as safetensors: {exc}") from exc


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 8 + length <= size and head[8:9] == b"{"


def weight_format(path: str) -> str:
    """'torch', 'safetensors', 'torch-legacy' (a pre-1.6 pickle, refused) or 'mindspore'."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as file:
        head = file.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if _is_safetensors(head, os.path.getsize(path)):
        return "safetensors"
    if head[:1] == b"\x80":     # a pickle's PROTO opcode: torch.save's legacy format
        return "torch-legacy"
    return "mindspore"


def read_weights(path: str) -> tuple:
    """(format, {name: numpy array or MindSpore Parameter}) of a weight file."""
    kind = weight_format(path)
    if kind == "torch":
        return kind, _read_torch_archive(path)
    if kind == "safetensors":
        return kind, _read_safetensors(path)
    if kind == "torch-legacy":
        raise CheckpointError(
            f"{path}: PyTorch's legacy (pre-1.6) format, a bare pickle that cannot be read "
            "without running its code; re-save it with torch >= 1.6: torch.save(torch.load(F, "
            "weights_only=True), 'resnet34.pth')")
    return kind, read_checkpoint(path)
