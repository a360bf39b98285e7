"""BatchNorm folded into the convolution before it, for inference with our CPU convolutions.

In eval mode BatchNorm is an affine map per channel, so conv -> BN equals one convolution with
scaled weights and a bias: ``w' = w s``, ``b' = (b - mean) s + beta``, ``s = gamma /
sqrt(var + eps)``. That removes every BatchNorm op from an inference graph (the backbone's
41 of them at batch 8: about 8 % of CPU inference time). Only for networks that are used for
inference and not updated afterwards: the folded weights are a snapshot.
"""
import numpy as np
from mindspore import nn

from src.model.batch_norm import AddActivation, BatchNormAct2d
from src.model.onednn_conv import OneDnnConv2d


def _folded(conv, bn):
    gamma, beta, mean, var = (p.asnumpy().astype(np.float64) for p in
                              (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    scale = gamma / np.sqrt(var + bn.eps)
    return conv.scaled(scale, beta - mean * scale)


def _left_of(bn):
    """What stays of a folded BatchNorm: the add and activation of a BatchNormAct2d."""
    return AddActivation(bn.activation) if isinstance(bn, BatchNormAct2d) else nn.Identity()


def _foldable(conv, bn):
    return isinstance(conv, OneDnnConv2d) and isinstance(bn, nn.BatchNorm2d)


def fold_batch_norm(network):
    """Fold each BatchNorm that directly follows one of our convolutions (``convN`` / ``bnN``
    attributes, or neighbours in a SequentialCell) into it, in place; returns the count.
    The network must be in eval mode (``set_train(False)``)."""
    if network.training:
        raise ValueError("fold_batch_norm needs a network in eval mode (set_train(False))")
    folded = 0
    for _, cell in list(network.cells_and_names()):
        if isinstance(cell, nn.SequentialCell):
            layers = list(cell.cell_list)
            for i in range(len(layers) - 1):
                if _foldable(layers[i], layers[i + 1]):
                    cell[i] = _folded(layers[i], layers[i + 1])
                    cell[i + 1] = _left_of(layers[i + 1])
                    folded += 1
            continue
        children = dict(cell.name_cells())
        for name, conv in children.items():
            bn_name = "bn" + name[len("conv"):] if name.startswith("conv") else None
            if bn_name in children and _foldable(conv, children[bn_name]):
                setattr(cell, name, _folded(conv, children[bn_name]))
                setattr(cell, bn_name, _left_of(children[bn_name]))
                folded += 1
    return folded
