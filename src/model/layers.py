"""Which kernels a network's layers run: a ``Layers`` object passed into every block that builds
layers (as mindcv passes ``norm``), kept by the network (``SsdResnet34.layers``).

- ``impl`` 'mindspore': MindSpore's ``nn.Conv2d``, ``nn.BatchNorm2d`` ops and max-pool, NCHW
  throughout (GPU, Ascend, or CPU without our kernel library);
- ``impl`` 'onednn' (CPU): our kernels (``OneDnnConv2d``: same arguments, parameters and
  results as ``nn.Conv2d``; the fused BatchNorm; our max-pool), computing in ``dtype``
  ('bfloat16': bfloat16 products, float32 accumulation), with activations kept in oneDNN's
  blocked layout of ``block`` channels where the model allows it (``src.model.layout``;
  PLAIN: NCHW), and ``algorithm`` (a ``conv_algorithm``) saying which 3x3 stride-1 layers
  compute their forward and input gradient by Winograd F(4x4, 3x3).
"""
import os
import warnings
from dataclasses import dataclass
from typing import Optional

from mindspore import nn

from src.config import Config
from src.cpu import ONEDNN_ISA_VARIABLE, cpu_info
from src.model.batch_norm import BatchNormAct2d
from src.model.layout import BLOCKS, PLAIN, blockable
from src.model.max_pool import max_pool_same
from src.model.onednn_conv import ALGORITHM_CHOICES, COMPUTE_DTYPES, OneDnnConv2d, library_path

IMPLEMENTATIONS = ("auto", "mindspore", "onednn")
LAYOUT_BLOCKS = {"auto": None, "16": 16, "8": 8, "plain": PLAIN}  # config's layout_block


def check_conv_dtype(dtype: str, impl: str) -> None:
    """Refuse a compute dtype the chosen implementation cannot run."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"conv_dtype {dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)}")
    if dtype != "float32" and impl != "onednn":
        raise ValueError(f"conv_dtype {dtype} needs our oneDNN convolutions (CPU, built by make); "
                         f"this run uses {impl}'s")
    refusal = cpu_info().bf16_refusal() if dtype == "bfloat16" else None
    if refusal:
        raise ValueError(refusal)


def resolve_conv_impl(choice: str, platform: str) -> str:
    """'mindspore' or 'onednn' for a config's ``conv_impl`` on a platform."""
    if choice not in IMPLEMENTATIONS:
        raise ValueError(f"conv_impl {choice!r}: expected one of {', '.join(IMPLEMENTATIONS)}")
    if choice == "onednn":
        if platform != "CPU":
            raise ValueError(f"--conv_impl onednn runs on CPU only (this run: {platform})")
        if not library_path():
            raise ValueError("--conv_impl onednn: the kernel library is not built "
                             "(run make, or bash src/kernels/build.sh)")
        return "onednn"
    if choice == "auto" and platform == "CPU" and library_path():
        return "onednn"
    return "mindspore"


def layout_block_for(choice: str) -> int:
    """The block of blocked layouts for a config's ``layout_block``: 'auto' is the one of the
    ISA oneDNN runs here (16 with AVX-512, 8 with AVX2), 'plain' is PLAIN (NCHW)."""
    if choice not in LAYOUT_BLOCKS:
        raise ValueError(f"layout_block {choice!r}: expected one of {', '.join(LAYOUT_BLOCKS)}")
    block = LAYOUT_BLOCKS[choice]
    return cpu_info().block if block is None else block


@dataclass(frozen=True)
class Layers:
    """The layer choices of one network (see the module's docstring). Build with
    ``Layers.create`` or ``Layers.from_config``; the default is MindSpore's layers, NCHW."""

    impl: str = "mindspore"
    dtype: str = "float32"
    block: int = PLAIN
    algorithm: str = "direct"
    bn_momentum: float = 0.0  # 0: each BatchNorm keeps the momentum its block gives it

    def __post_init__(self):
        if self.impl not in ("mindspore", "onednn"):
            raise ValueError(f"Layers impl {self.impl!r}: expected 'mindspore' or 'onednn'")
        check_conv_dtype(self.dtype, self.impl)
        if self.algorithm not in ALGORITHM_CHOICES:
            raise ValueError(f"conv_algorithm {self.algorithm!r}: expected one of "
                             f"{', '.join(ALGORITHM_CHOICES)}")
        if self.block not in (PLAIN, *BLOCKS):
            raise ValueError(f"block {self.block!r}: expected {PLAIN} (NCHW) or one of {BLOCKS}")
        if self.block != PLAIN and self.impl != "onednn":
            raise ValueError("blocked layouts need our oneDNN layers (impl 'onednn')")

    @classmethod
    def create(cls, impl: str, dtype: str = "float32", blocked: bool = True,
               block: Optional[int] = None, algorithm: str = "auto",
               bn_momentum: float = 0.0) -> "Layers":
        """``impl``'s layers; with 'onednn' and ``blocked``, activations blocked by ``block``
        channels (None: the ISA's, see ``layout_block_for``), else NCHW."""
        if impl != "onednn" or not blocked:
            block = PLAIN
        elif block is None:
            block = layout_block_for("auto")
        return cls(impl, dtype, block, algorithm, bn_momentum)

    @classmethod
    def from_config(cls, config: Config, platform: str) -> "Layers":
        """The layers ``config`` asks for on ``platform`` (conv_impl, conv_dtype, layout_block,
        conv_algorithm, bn_momentum)."""
        impl = resolve_conv_impl(config.conv_impl, platform)
        if (impl == "mindspore" and platform == "CPU" and ONEDNN_ISA_VARIABLE not in os.environ
                and library_path()):
            warnings.warn(f"MindSpore's CPU convolutions run about 35x slower on AVX-512 "
                          f"processors without {ONEDNN_ISA_VARIABLE}=AVX2: call "
                          "src.device.prepare_process(config) before importing mindspore (the "
                          "entry scripts do)", stacklevel=2)
        return cls.create(impl, config.conv_dtype, block=layout_block_for(config.layout_block),
                          algorithm=config.conv_algorithm, bn_momentum=config.bn_momentum)

    @property
    def ours(self) -> bool:
        """Whether these are our CPU kernels (fused BatchNorm, focal loss, NHWC head outputs)."""
        return self.impl == "onednn"

    def blockable(self, channels: int) -> bool:
        """Whether a tensor of this many channels lives in the blocked layout here."""
        return blockable(channels, self.block)

    def conv2d(self, *args, input_grad: bool = True, blocked_input: bool = False,
               blocked_output: bool = False, nhwc_output: bool = False, **kwargs) -> nn.Cell:
        """``nn.Conv2d(*args, **kwargs)``, or its oneDNN twin with our layers.
        ``input_grad=False`` marks a layer whose input needs no gradient (the image): ours then
        skips computing it. ``blocked_input`` / ``blocked_output`` mark an input / output in the
        model's blocked region (honoured when ``block`` is not PLAIN). ``nhwc_output``: ours
        gives (N, OH, OW, O); MindSpore's always NCHW."""
        if not self.ours:
            return nn.Conv2d(*args, **kwargs)
        return OneDnnConv2d(*args, compute_dtype=self.dtype, input_grad=input_grad,  # type: ignore[misc]
                            blocked_input=self.block != PLAIN and blocked_input,
                            blocked_output=self.block != PLAIN and blocked_output,
                            nhwc_output=nhwc_output, block=self.block or None,
                            algorithm=self.algorithm, **kwargs)

    def batch_norm(self, channels: int, eps: float = 1e-5, momentum: float = 0.9,
                   activation: Optional[str] = None, blocked: bool = False,
                   residual: bool = False) -> BatchNormAct2d:
        """``act(bn(x) [+ residual])``: one fused op with our layers, MindSpore's ops otherwise;
        in the blocked layout when marked ``blocked`` and this network keeps blocked layouts.
        ``momentum`` gives way to ``self.bn_momentum`` when that is set."""
        momentum = self.bn_momentum or momentum
        return BatchNormAct2d(channels, eps, momentum, activation, fused=self.ours,
                              block=self.block if blocked else PLAIN, residual=residual)

    def max_pool_same(self, channels: int, kernel_size: int, stride: int) -> nn.Cell:
        """TF-style 'same' max-pool: ours on the blocked layout, MindSpore's on NCHW."""
        return max_pool_same(channels, kernel_size, stride, self.block)
