"""SSD-ResNet34 network: truncated ResNet-34 backbone, extra blocks, depthwise-separable heads;
the layer choices (``Layers``), the inference network, weights from checkpoints."""
from src.model.inference import SsdInferWithDecoder, build_inference_network
from src.model.layers import Layers
from src.model.ssd import (
                           SsdResnet34,
                           build_ssd,
                           conv_description,
                           count_trainable_params,
                           freeze_batch_norm,
                           init_weights,
)

__all__ = ["Layers", "SsdResnet34", "SsdInferWithDecoder", "build_ssd",
           "build_inference_network", "conv_description", "count_trainable_params",
           "freeze_batch_norm", "init_weights"]
