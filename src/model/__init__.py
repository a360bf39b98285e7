"""SSD-ResNet34 network: truncated ResNet-34 backbone, extra blocks, depthwise-separable heads."""
from src.model.ssd import (SsdInferWithDecoder, SsdResnet34, build_ssd, conv_description,
                           count_trainable_params, freeze_batch_norm, init_weights)

__all__ = ["SsdResnet34", "SsdInferWithDecoder", "build_ssd", "conv_description",
           "count_trainable_params", "freeze_batch_norm", "init_weights"]
