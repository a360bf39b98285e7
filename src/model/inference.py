"""The inference network: detector + in-graph box decoder in eval mode, weights from a
checkpoint, BatchNorm folded into our CPU convolutions (``src.model.fold``)."""
from typing import Optional

import numpy as np
from mindspore import Tensor, nn, ops

from src.anchors import default_boxes_from_config
from src.config import Config
from src.model.fold import fold_batch_norm
from src.model.layers import Layers
from src.model.metadata import INFERENCE_ADVICE
from src.model.ssd import build_ssd
from src.model.weights import check_default_boxes, load_weights, read_checkpoint


class SsdInferWithDecoder(nn.Cell):
    """Network plus in-graph box decoding: image -> boxes (B, A, 4), scores (B, A, C).

    Boxes are corner form (ymin, xmin, ymax, xmax), normalised and clipped to [0, 1]; scores
    are sigmoid outputs. Same formulas as ``src.box_coder.BoxCoder.decode``.
    """

    def __init__(self, network, default_boxes_cyxhw, prior_scaling=(0.1, 0.2)):
        super().__init__()
        self.network = network
        anchors = np.asarray(default_boxes_cyxhw, np.float32)
        self.anchor_center = Tensor(anchors[:, :2])
        self.anchor_size = Tensor(anchors[:, 2:])
        self.center_scale = float(prior_scaling[0])
        self.size_scale = float(prior_scaling[1])

    def construct(self, x):
        loc, scores = self.network(x)
        center = loc[..., :2] * self.center_scale * self.anchor_size + self.anchor_center
        size = ops.exp(loc[..., 2:] * self.size_scale) * self.anchor_size
        boxes = ops.concat((center - size / 2, center + size / 2), axis=-1)
        return ops.clamp(boxes, 0.0, 1.0), scores




def build_inference_network(config: Config, checkpoint_path: Optional[str] = None,
                            layers: Optional[Layers] = None,
                            fold_bn: bool = True) -> SsdInferWithDecoder:
    """Detector + in-graph decoder in eval mode, weights from ``checkpoint_path`` if given,
    layers as ``build_ssd`` chooses them unless ``layers`` says otherwise.

    A checkpoint that stores other default boxes than ``config``'s is refused
    (``check_default_boxes``). With our CPU convolutions and ``fold_bn``, BatchNorm is folded
    into the convolutions: pass False for a network whose parameters will be replaced later
    (``copy_weights``).
    """
    network = build_ssd(config, layers)
    if checkpoint_path:
        params = read_checkpoint(checkpoint_path)
        check_default_boxes(params, config, checkpoint_path, INFERENCE_ADVICE)
        load_weights(network, checkpoint_path, params=params, complete=True)
    net = SsdInferWithDecoder(network, default_boxes_from_config(config).cyxhw,
                              config.prior_scaling)
    net.set_train(False)
    if fold_bn:
        fold_batch_norm(network)
    return net
