"""SSD-ResNet34 loss (spec section 6): sigmoid focal loss + smooth-L1, over the batch's positives.

For logits L (B, A, C), offsets P (B, A, 4), targets T (B, A, 4), labels y (B, A) and positive
counts n (B, 1):

* classification: sigmoid focal loss on all C columns, background included, target one-hot(y):
  ``(1 - p_t)^gamma * (t alpha + (1 - t)(1 - alpha)) * BCE(logit, t)``, summed over anchors
  with y >= 0 (y = -1 marks anchors on ignore regions such as COCO crowds);
* localisation: smooth-L1 (beta 1) of P - T on positive anchors (y > 0), summed;
* on CPU with our kernels built (the network's convolutions are ours), the classification
  sum is one fused op of ours (``src/kernels/focal_loss.cc``: same formula, analytic gradient)
  instead of about fifteen elementwise ops and their gradients;
* both divided by N = sum(n) over the per-device batch, with N < 1 taken as 1 (a batch without
  positives still trains the classifier instead of dividing by zero). With ``global_norm`` in a
  data-parallel run N is the mean of the devices' sums instead, so that averaging the devices'
  gradients gives exactly the gradient of one device holding all their images.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from src.data.transforms import MEAN_RGB, STD_RGB


def sigmoid_focal_loss(logits, targets, gamma=2.0, alpha=0.75):
    """Elementwise focal loss of logits against 0/1 targets of the same shape."""
    probs = ops.sigmoid(logits)
    bce = ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
    p_t = targets * probs + (1 - targets) * (1 - probs)
    weight = targets * alpha + (1 - targets) * (1 - alpha)
    return ops.pow(1 - p_t, gamma) * weight * bce


def fused_focal_loss_sum():
    """Our Custom op: (logits (B, A, C), labels (B, A) int32 with -1 = ignore, [gamma, alpha])
    -> (1,) the focal loss summed over the anchors with labels >= 0 (targets one-hot(label))."""
    from src.device import kernel_op

    grad = kernel_op("FocalLossGrad", lambda x, y, s, d: x, lambda x, y, s, d: x)

    def bprop(logits, labels, settings, out, dout):
        return (grad(logits, labels, settings, dout), ops.zeros_like(labels),
                ops.zeros_like(settings))

    return kernel_op("FocalLossSum", lambda x, y, s: [1], lambda x, y, s: x, bprop)


def smooth_l1(diff):
    """0.5 d^2 where |d| < 1, |d| - 0.5 elsewhere."""
    absolute = ops.abs(diff)
    return ops.where(absolute < 1.0, 0.5 * diff * diff, absolute - 0.5)


class SSDWithLossCell(nn.Cell):
    """Network plus loss: (image, gt_loc, gt_label, num_match) -> (loss, cls_loss, loc_loss).

    ``loss = cls_loss + loc_loss``; each part is already divided by the number of positives.
    ``fused_focal``: our fused focal-loss op (CPU, with our kernels: ``network.layers.ours``).
    ``uint8_input``: images arrive as uint8 pixels and are normalised here, on the device, as
    the pipeline's Normalize would (``src.data.pipeline``, ``uint8``).
    """

    def __init__(self, network, gamma=2.0, alpha=0.75, global_norm=False, world_size=1,
                 fused_focal=False, uint8_input=False):
        super().__init__()
        self.network = network
        self.uint8_input = bool(uint8_input)
        self.mean = ms.Tensor(np.array(MEAN_RGB, np.float32).reshape(1, 3, 1, 1))
        self.std = ms.Tensor(np.array(STD_RGB, np.float32).reshape(1, 3, 1, 1))
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.global_norm = bool(global_norm) and world_size > 1
        self.world_size = float(world_size)
        self.fused_focal = bool(fused_focal)
        if self.fused_focal:
            self.focal_sum = fused_focal_loss_sum()
            self.focal_settings = ms.Tensor([self.gamma, self.alpha], ms.float32)
        if self.global_norm:
            self.all_reduce = ops.AllReduce()

    def construct(self, image, gt_loc, gt_label, num_match):
        if self.uint8_input:
            image = (ops.cast(image, ms.float32) - self.mean) / self.std
        pred_loc, pred_cls = self.network(image)
        positive = ops.cast(gt_label > 0, ms.float32)
        num_positive = ops.reduce_sum(ops.cast(num_match, ms.float32))
        if self.global_norm:
            num_positive = self.all_reduce(num_positive) / self.world_size
        num_positive = ops.maximum(num_positive, 1.0)
        loc = ops.reduce_sum(smooth_l1(pred_loc - gt_loc) * ops.expand_dims(positive, -1))
        if self.fused_focal:
            cls = self.focal_sum(pred_cls, ops.cast(gt_label, ms.int32),
                                 self.focal_settings).reshape(())
        else:
            valid = ops.cast(gt_label >= 0, ms.float32)
            targets = ops.one_hot(ops.maximum(gt_label, 0), pred_cls.shape[-1],
                                  ops.ones((), ms.float32), ops.zeros((), ms.float32))
            focal = sigmoid_focal_loss(pred_cls, targets, self.gamma, self.alpha)
            cls = ops.reduce_sum(focal * ops.expand_dims(valid, -1))
        cls_loss = cls / num_positive
        loc_loss = loc / num_positive
        return cls_loss + loc_loss, cls_loss, loc_loss
