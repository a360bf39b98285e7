"""Which convolution the model is built with: MindSpore's ``nn.Conv2d``, or on CPU our oneDNN
kernels (``OneDnnConv2d``: same arguments, parameters and results, about twice as fast here).

``conv_impl`` 'auto' picks oneDNN on CPU when its library is built (``make`` builds it), else
``nn.Conv2d``. ``conv_dtype`` 'bfloat16' (oneDNN only) multiplies in bfloat16 with float32
accumulation. ``conv_algorithm`` (oneDNN only): which 3x3 stride-1 layers compute their forward
and input gradient by Winograd F(4x4, 3x3) (``OneDnnConv2d``'s ``algorithm``). The choice is
made once per network build (``building_with``).
"""
import contextlib
import os
import warnings

from mindspore import nn

from src.cpu import ONEDNN_ISA_VARIABLE, cpu_info
from src.model.layout import PLAIN
from src.model.onednn_conv import ALGORITHM_CHOICES, COMPUTE_DTYPES, OneDnnConv2d, library_path

IMPLEMENTATIONS = ("auto", "mindspore", "onednn")
LAYOUT_BLOCKS = {"auto": None, "16": 16, "8": 8, "plain": PLAIN}  # config's layout_block
# impl, compute dtype, block of blocked layouts, conv_algorithm
_current = [("mindspore", "float32", PLAIN, "direct")]


def check_conv_dtype(dtype, impl):
    """Refuse a compute dtype the chosen implementation cannot run."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"conv_dtype {dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)}")
    if dtype != "float32" and impl != "onednn":
        raise ValueError(f"conv_dtype {dtype} needs our oneDNN convolutions (CPU, built by make); "
                         f"this run uses {impl}'s")
    refusal = cpu_info().bf16_refusal() if dtype == "bfloat16" else None
    if refusal:
        raise ValueError(refusal)


def resolve_conv_impl(choice, platform):
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
    if platform == "CPU" and ONEDNN_ISA_VARIABLE not in os.environ:
        warnings.warn(f"MindSpore's CPU convolutions run about 35x slower on AVX-512 processors "
                      f"without {ONEDNN_ISA_VARIABLE}=AVX2, which was not set because our kernels "
                      "are built: pass --conv_impl mindspore on the command line (not only in a "
                      "config file), or set the variable yourself", stacklevel=2)
    return "mindspore"


def layout_block_for(choice):
    """The block of blocked layouts for a config's ``layout_block``: 'auto' is the one of the
    ISA oneDNN runs here (16 with AVX-512, 8 with AVX2), 'plain' is PLAIN (NCHW)."""
    if choice not in LAYOUT_BLOCKS:
        raise ValueError(f"layout_block {choice!r}: expected one of {', '.join(LAYOUT_BLOCKS)}")
    block = LAYOUT_BLOCKS[choice]
    return cpu_info().block if block is None else block


@contextlib.contextmanager
def building_with(impl, dtype="float32", blocked=True, block=None, algorithm="auto"):
    """Build the layers created inside the block with ``impl`` convolutions computing in
    ``dtype``; with 'onednn' and ``blocked``, layers the model marks as blocked keep their
    activations in oneDNN's blocked layout (``src.model.layout``) of ``block`` channels (None:
    the ISA's, see ``layout_block_for``), and ``algorithm`` (a ``conv_algorithm``) says which
    3x3 layers run Winograd (``OneDnnConv2d``'s ``algorithm``)."""
    check_conv_dtype(dtype, impl)
    if algorithm not in ALGORITHM_CHOICES:
        raise ValueError(f"conv_algorithm {algorithm!r}: expected one of "
                         f"{', '.join(ALGORITHM_CHOICES)}")
    previous = _current[0]
    if impl != "onednn" or not blocked:
        block = PLAIN
    _current[0] = (impl, dtype, layout_block_for("auto") if block is None else block, algorithm)
    try:
        yield
    finally:
        _current[0] = previous


def current_conv_impl():
    """'mindspore' or 'onednn': what the layers being built now use."""
    return _current[0][0]


def layout_block():
    """The block of the blocked layout the layers being built keep where the model allows it
    (PLAIN: none)."""
    return _current[0][2]


def Conv2d(*args, input_grad=True, blocked_input=False, blocked_output=False,  # noqa: N802
           nhwc_output=False, **kwargs):
    """``nn.Conv2d(*args, **kwargs)``, or its oneDNN twin while building with 'onednn'.
    ``input_grad=False`` marks a layer whose input needs no gradient (the image): ours then
    skips computing it. ``blocked_input`` / ``blocked_output`` mark an input / output in the
    model's blocked region (used when ``layout_block()`` is not PLAIN). ``nhwc_output``: ours gives
    (N, OH, OW, O) (see ``nhwc_outputs()``); MindSpore's always NCHW."""
    impl, dtype, block, algorithm = _current[0]
    if impl == "onednn":
        return OneDnnConv2d(*args, compute_dtype=dtype, input_grad=input_grad,
                            blocked_input=block != PLAIN and blocked_input,
                            blocked_output=block != PLAIN and blocked_output,
                            nhwc_output=nhwc_output, block=block or None, algorithm=algorithm,
                            **kwargs)
    return nn.Conv2d(*args, **kwargs)


def nhwc_outputs():
    """Whether layers built now honour ``nhwc_output`` (our convolutions do)."""
    return current_conv_impl() == "onednn"
