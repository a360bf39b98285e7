"""Export (MINDIR, ONNX, AIR) of the detector with its in-graph decoder, and the ONNX form that
OpenCV's DNN module (the C++ program's engine on CPU) computes correctly.

Exported graph: input (B, 3, 300, 300) float32, normalised as in evaluation; outputs boxes
(B, 8732, 4) normalised clipped (ymin, xmin, ymax, xmax) and scores (B, 8732, C) sigmoid. No NMS
inside: the same ``src.detections`` post-processing runs on every engine's outputs.
"""
import numpy as np

from src.config import Config
from src.files import atomic_path

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


class ExportError(RuntimeError):
    """An export that cannot be made here; the message says why."""


def export_model(config: Config, checkpoint_path, file_name, file_format="MINDIR", batch_size=1,
                 platform="CPU"):
    """Write ``<file_name>.<mindir|onnx|air>``; returns its path."""
    import mindspore as ms

    from src.model import Layers, build_inference_network
    from src.model.metadata import check_inference_boxes, with_checkpoint_classes

    file_format = file_format.upper()
    if file_format not in FORMATS:
        raise ExportError(f"--file_format {file_format}: expected one of {', '.join(FORMATS)}")
    if file_format == "AIR" and platform != "Ascend":
        raise ExportError("AIR export needs an Ascend device and its CANN toolkit "
                          "(--device_target Ascend); on CPU and GPU export MINDIR or ONNX")
    if checkpoint_path:   # else the network's initial weights (benchmarks)
        check_inference_boxes(config, checkpoint_path)
        config = with_checkpoint_classes(config, checkpoint_path)
    # Exported graphs must not refer to our kernel library: MindSpore's own convolutions.
    net = build_inference_network(config, checkpoint_path, layers=Layers())
    sample = ms.Tensor(np.random.default_rng(0).uniform(
        -1, 1, (batch_size, 3, *config.img_shape)).astype(np.float32))
    path = file_name if file_name.endswith(FORMATS[file_format]) else \
        file_name + FORMATS[file_format]
    # Written in a private hidden folder next to ``path`` and moved into place once complete:
    # MindSpore's ONNX writer sets the mode of the folder it writes into to 0700 (with a bare
    # --file_name, the current folder), and a half-written export is never left under the name.
    with atomic_path(path, private=True) as tmp:
        ms.export(net, sample, file_name=tmp, file_format=file_format)
    return path


def _constant(graph, name, value):
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name


def opencv_compatible(onnx_path, out_path):
    """Rewrite an exported ONNX graph into forms OpenCV 4.6's DNN module computes correctly.

    * ``Clip`` with min/max inputs (ReLU6) is refused by OpenCV 4.6: it becomes
      min(max(x, lo), hi) written as ``-Relu(-Relu(x) + 6) + 6`` for [0, 6], and the general
      ``Max``/``Min`` pair otherwise;
    * ``MaxPool`` with ``auto_pad`` SAME_UPPER gets explicit pads (OpenCV computed it wrongly).

    The result is numerically the same graph (checked against onnxruntime in the tests).
    """
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load(onnx_path)
    model = shape_inference.infer_shapes(model)
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    shapes = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    nodes = []
    for node in graph.node:
        if node.op_type == "Clip" and len(node.input) >= 3:
            low = float(constants[node.input[1]]) if node.input[1] else -np.inf
            high = float(constants[node.input[2]]) if node.input[2] else np.inf
            if low == 0.0 and np.isfinite(high):
                x, out = node.input[0], node.output[0]
                six = _constant(graph, f"{out}__high", high)
                minus = _constant(graph, f"{out}__minus_one", -1.0)
                names = [f"{out}__{k}" for k in range(5)]
                nodes += [helper.make_node("Relu", [x], [names[0]]),
                          helper.make_node("Mul", [names[0], minus], [names[1]]),
                          helper.make_node("Add", [names[1], six], [names[2]]),
                          helper.make_node("Relu", [names[2]], [names[3]]),
                          helper.make_node("Mul", [names[3], minus], [names[4]]),
                          helper.make_node("Add", [names[4], six], [out])]
                continue
        if node.op_type == "MaxPool":
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            auto_pad = attributes.get("auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                kernel = attributes["kernel_shape"]
                strides = attributes.get("strides", [1] * len(kernel))
                size = shapes.get(node.input[0], [])[2:]
                if len(size) != len(kernel) or not all(size):
                    raise ExportError(f"MaxPool {node.name}: input size unknown, cannot make "
                                      "its padding explicit")
                begins, ends = [], []
                for n, k, s in zip(size, kernel, strides):
                    total = max((-(-n // s) - 1) * s + k - n, 0)
                    small, large = total // 2, total - total // 2
                    begins.append(small if auto_pad == "SAME_UPPER" else large)
                    ends.append(large if auto_pad == "SAME_UPPER" else small)
                new = helper.make_node("MaxPool", list(node.input), list(node.output),
                                       name=node.name, kernel_shape=kernel, strides=strides,
                                       pads=begins + ends)
                nodes.append(new)
                continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, tmp)
    return out_path
