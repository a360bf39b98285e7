"""Inference engines of eval.py, predict.py and the benchmark: this repository's MindSpore
network, or the same checkpoint exported to ONNX (``src.infer.deploy.export_model``, in-graph
decoder included) and run by onnxruntime or OpenVINO, the engines CPU users deploy SSD with.

``--quantize int8``: OpenVINO on the checkpoint quantized by NNCF (``src.infer.quantize``).

Each is a ``Detector``: images (B, 3, H, W) float32, normalised -> (boxes (B, A, 4) corner form
normalised, scores (B, A, C)) numpy, the inference network's outputs, so that every engine feeds
the one post-processing path (``src.detections``). The ONNX engines take a fixed batch size
(the export's); they run ``engine_threads`` threads, as our kernels do, and the arithmetic of
``conv_dtype`` where they offer it: OpenVINO would otherwise choose bfloat16 by itself on
processors with AVX512-BF16 or AMX; onnxruntime's CPU engine computes in float32 only.
"""
import os
import tempfile
from typing import Optional

import numpy as np

from src.config import Config
from src.cpu import usable_cores

BACKENDS = ("mindspore", "onnxruntime", "openvino")
OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16"}   # conv_dtype -> OpenVINO's name


def engine_threads(config: Config) -> int:
    """Threads of every engine: ``conv_threads``, or one per core this process may use."""
    if config.conv_threads:
        return config.conv_threads
    return usable_cores()


class Detector:
    """An engine's forward pass; ``net``: the MindSpore inference network (mindspore only);
    ``precision``: the arithmetic it runs, float32 or bfloat16 (as the engine reports it)."""

    def __init__(self, backend: str, run, batch_size: Optional[int] = None, net=None,
                 precision: str = "float32"):
        self.backend, self._run, self.batch_size, self.net = backend, run, batch_size, net
        self.precision = precision

    def __call__(self, images: np.ndarray) -> tuple:
        if self.batch_size is not None and len(images) != self.batch_size:
            raise ValueError(f"the {self.backend} engine was exported for batch "
                             f"{self.batch_size}, got {len(images)} images")
        boxes, scores = self._run(np.ascontiguousarray(images, np.float32))
        return np.asarray(boxes), np.asarray(scores)

    def describe(self) -> str:
        from src.model import conv_description

        if self.net is not None:
            return f"MindSpore, convolutions: {conv_description(self.net)}"
        version = {"onnxruntime": _onnxruntime_version, "openvino": _openvino_version}
        return (f"{self.backend} {version[self.backend]()} on the exported ONNX "
                f"({self.precision} arithmetic)")


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def create_detector(config: Config, checkpoint_path: Optional[str], backend: str = "mindspore",
                    batch_size: int = 1, fold_bn: bool = True) -> Detector:
    """The ``backend`` engine of ``checkpoint_path`` (None: the network's initial weights).
    ``batch_size``: the ONNX engines' fixed batch; ``fold_bn`` (mindspore): see
    ``build_inference_network``."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if config.quantize == "int8":
        if backend == "onnxruntime":
            raise ValueError("--quantize int8 runs on OpenVINO (NNCF's int8 model): use "
                             "--backend openvino or leave --backend out")
        return int8_detector(config, checkpoint_path, batch_size)
    if backend == "mindspore":
        import mindspore as ms

        from src.model import build_inference_network

        net = build_inference_network(config, checkpoint_path, fold_bn=fold_bn)

        def run(images):
            return tuple(x.asnumpy() for x in net(ms.Tensor(images)))

        return Detector(backend, run, net=net, precision=config.conv_dtype)
    from src.infer.deploy import export_model

    threads = engine_threads(config)
    with tempfile.TemporaryDirectory(prefix="ssd-engine-") as folder:
        path = export_model(config, checkpoint_path, os.path.join(folder, "ssd"), "ONNX",
                            batch_size, platform="CPU")
        if backend == "onnxruntime":
            run, precision = _onnxruntime_session(path, threads), "float32"
        else:
            run, precision = _openvino_model(path, threads, config.conv_dtype)
    return Detector(backend, run, batch_size, precision=precision)


def int8_detector(config: Config, checkpoint_path: Optional[str], batch_size: int) -> Detector:
    """OpenVINO running the int8 model of ``checkpoint_path`` (``src.infer.quantize``)."""
    from src.infer.quantize import int8_model

    path = int8_model(config, checkpoint_path, batch_size)
    run, _ = _openvino_model(path, engine_threads(config), "float32")
    return Detector("openvino", run, batch_size, precision="int8")


def _onnxruntime_session(path: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def _openvino_model(path: str, threads: int, precision: str):
    """A run function and the precision OpenVINO compiled it for (``precision`` asked)."""
    try:
        import openvino
    except ImportError as exc:
        raise ValueError("--backend openvino needs the openvino package: pip install -r "
                         "requirements-engines.txt (make setup tries it; its arm64 wheel needs "
                         "glibc 2.35 or later), or use --backend mindspore or onnxruntime"
                         ) from exc
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(path), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads,
                                   "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision]})
    request = compiled.create_infer_request()

    def run(images):
        outputs = request.infer([images])
        return tuple(outputs[compiled.output(i)] for i in range(2))

    chosen = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    return run, {name: dtype for dtype, name in OPENVINO_PRECISION.items()}.get(chosen, chosen)
