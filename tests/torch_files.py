"""Files in PyTorch's zip format made without torch, as ``torch.save`` writes a state dict
(the same records: tests/data/torch_state_dict.pth, written by torch 2.13, is read alike)."""
import collections
import contextlib
import io
import pickle
import sys
import types
import zipfile

import numpy as np

_STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, rebuild):
        self.storage, self.rebuild = storage, rebuild

    def __reduce__(self):
        shape = self.storage.array.shape
        strides = tuple(s // self.storage.array.itemsize for s in self.storage.array.strides)
        return self.rebuild, (self.storage, 0, shape, strides, False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def __init__(self, file, storage_types):
        super().__init__(file, protocol=2)
        self.storage_types = storage_types

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", self.storage_types[obj.array.dtype], obj.key, "cpu",
                    obj.array.size)
        return None


@contextlib.contextmanager
def _torch_names():
    """A stand-in ``torch`` module for the pickler to name torch's globals by."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    storage_types = {}
    for dtype, name in _STORAGES.items():
        storage_types[dtype] = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storage_types[dtype])
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield _rebuild_tensor_v2, storage_types
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name)
            else:
                sys.modules[name] = module


def save_state_dict(state: dict, path: str, prefix: str = "resnet34") -> None:
    """``state`` ({name: float32 or int64 array}) as torch.save would write it."""
    arrays = {name: np.array(value, order="C") for name, value in state.items()}
    with _torch_names() as (rebuild, storage_types):
        storages = {name: _Storage(str(k), a) for k, (name, a) in enumerate(arrays.items())}
        data = io.BytesIO()
        _Pickler(data, storage_types).dump(collections.OrderedDict(
            (name, _Tensor(storages[name], rebuild)) for name in arrays))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{prefix}/data.pkl", data.getvalue())
        archive.writestr(f"{prefix}/byteorder", "little")
        archive.writestr(f"{prefix}/version", "3\n")
        for storage in storages.values():
            archive.writestr(f"{prefix}/data/{storage.key}", storage.array.tobytes())
