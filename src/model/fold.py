"""Inference networks with our CPU convolutions: BatchNorm folded into the convolution before
it, activations fused into the convolutions, weights kept reordered.

In eval mode BatchNorm is an affine map per channel, so conv -> BN equals one convolution with
scaled weights and a bias: ``w' = w s``, ``b' = (b - mean) s + beta``, ``s = gamma /
sqrt(var + eps)``. A ReLU or ReLU6 right after (the BatchNorm's own, or an ``nn.ReLU`` /
``nn.ReLU6`` layer) becomes part of the convolution (a oneDNN post-op), and so does the
residual add of a BatchNorm that takes one: ``bn(conv(x), r)`` becomes ``conv'(x, r)``, the
folded convolution taking the BatchNorm's place and the identity the convolution's. Every
convolution of the result is an inference-only copy whose weights are reordered once
(``OneDnnConv2d.for_inference``). Only for networks that are used for inference and not updated
afterwards: the result is a snapshot.
"""
import numpy as np
from mindspore import nn

from src.model.batch_norm import ACTIVATION_LAYERS
from src.model.onednn_conv import OneDnnConv2d

ACTIVATION_OF_LAYER = {layer: name for name, layer in ACTIVATION_LAYERS.items()}


def _affine(bn):
    """(scale, shift) per channel of an eval-mode BatchNorm, and its own activation."""
    gamma, beta, mean, var = (p.asnumpy().astype(np.float64) for p in
                              (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    scale = gamma / np.sqrt(var + bn.eps)
    return scale, beta - mean * scale, getattr(bn, "activation", None)


def _foldable(conv, bn):
    return isinstance(conv, OneDnnConv2d) and isinstance(bn, nn.BatchNorm2d)


def _fuse_sequence(cell):
    """In a SequentialCell: conv [BN] [activation layer] -> one inference convolution."""
    layers = list(cell.cell_list)
    folded = 0
    for i, conv in enumerate(layers):
        if not isinstance(conv, OneDnnConv2d) or conv.constant_weights:
            continue
        after, scale, shift, activation = i + 1, None, None, None
        if after < len(layers) and _foldable(conv, layers[after]):
            if getattr(layers[after], "takes_residual", False):
                raise ValueError("a BatchNorm taking a residual inside a SequentialCell")
            scale, shift, activation = _affine(layers[after])
            layers[after] = nn.Identity()
            folded += 1
            after += 1
        if not activation and after < len(layers) and type(layers[after]) in ACTIVATION_OF_LAYER:
            activation = ACTIVATION_OF_LAYER[type(layers[after])]
            layers[after] = nn.Identity()
        layers[i] = conv.for_inference(scale, shift, activation)
    for i, layer in enumerate(layers):
        if layer is not cell[i]:
            cell[i] = layer
    return folded


def fold_batch_norm(network):
    """Turn an eval-mode network with our convolutions into its inference form, in place (see
    the module's docstring): folds each BatchNorm that directly follows one of our
    convolutions (``convN`` / ``bnN`` attributes, or neighbours in a SequentialCell); returns
    the number folded."""
    if network.training:
        raise ValueError("fold_batch_norm needs a network in eval mode (set_train(False))")
    folded = 0
    for _, cell in list(network.cells_and_names()):
        if isinstance(cell, nn.SequentialCell):
            folded += _fuse_sequence(cell)
            continue
        children = dict(cell.name_cells())
        for name, conv in children.items():
            bn_name = "bn" + name[len("conv"):] if name.startswith("conv") else None
            if bn_name is not None and bn_name in children and _foldable(conv,
                                                                          children[bn_name]):
                bn = children[bn_name]
                scale, shift, activation = _affine(bn)
                if getattr(bn, "takes_residual", False):  # bn(conv(x), r) -> conv'(x, r)
                    setattr(cell, name, nn.Identity())
                    setattr(cell, bn_name, conv.for_inference(scale, shift, activation,
                                                              residual_sum=True))
                else:
                    setattr(cell, name, conv.for_inference(scale, shift, activation))
                    setattr(cell, bn_name, nn.Identity())
                folded += 1
    return folded
