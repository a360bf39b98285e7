"""Device set-up: the oneDNN instruction-set cap, device choice, graph mode and seeds.

This module must not import MindSpore at module level: ``prepare_process`` has to run before
MindSpore (and with it oneDNN) is loaded.
"""
import glob
import hashlib
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from platform import machine

from src.config import Config
from src.cpu import ONEDNN_ISA_VARIABLE, X86_64, cpu_info, unknown_cap_problem
from src.prerequisites import prerequisite_problem

PLATFORMS = ("CPU", "GPU", "Ascend")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_LIBRARY = os.path.join(ROOT, "build", "kernels", "libssd_cpu_kernels.so")
KERNEL_SOURCES = os.path.join(ROOT, "src", "kernels")
KERNEL_THREADS_VARIABLE = "SSD_CONV_THREADS"  # how conv_threads reaches src/kernels/threads.h
M_ARENA_MAX = -8   # glibc's mallopt parameter (malloc.h)


def kernel_sources_digest(sources=KERNEL_SOURCES):
    """sha256 of the kernel sources and the script that compiles them (*.cc, *.h, build.sh
    with its flags, in name order), as build.sh records it."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(sources)):
        if name.endswith((".cc", ".h")) or name == "build.sh":
            with open(os.path.join(sources, name), "rb") as source:
                digest.update(source.read())
    return digest.hexdigest()


def kernel_library_status(library=KERNEL_LIBRARY, sources=KERNEL_SOURCES):
    """'current', 'missing', 'stale' (built from other sources than those in the tree: its
    ops may not match the Python side, so it must not be loaded; make rebuilds it), or
    'not x86-64' (the kernels are x86-64 code; make builds them nowhere else)."""
    if machine().lower() not in X86_64:
        return "not x86-64"
    if not os.path.isfile(library):
        return "missing"
    try:
        with open(library + ".sha256") as stamp:
            recorded = stamp.read().strip()
    except OSError:
        return "stale"
    return "current" if recorded == kernel_sources_digest(sources) else "stale"


def kernel_op(function, out_shape, out_dtype, bprop=None):
    """A MindSpore Custom AOT op running ``function`` of our kernel library."""
    from mindspore import ops

    return ops.Custom(f"{KERNEL_LIBRARY}:{function}", out_shape=out_shape, out_dtype=out_dtype,
                      func_type="aot", bprop=bprop)


def kernel_library_usable():
    """Whether our kernel library is built from the current sources; warns when it is stale."""
    status = kernel_library_status()
    if status == "stale":
        warnings.warn(f"{KERNEL_LIBRARY} was built from other sources than src/kernels: not used "
                      "(MindSpore's convolutions instead); run make to rebuild it", stacklevel=2)
    return status == "current"


def cap_onednn_isa(config: Config):
    """Cap oneDNN at AVX2 when ``config`` runs MindSpore's own CPU convolutions, unless the user
    set the variable; returns the value in effect (None: no cap).

    Why: MindSpore 2.10's CPU convolution hands oneDNN fixed plain layouts (NCHW activations,
    OIHW weights). On AVX-512/AMX processors oneDNN's fast kernels refuse those layouts and it
    falls back to a reference kernel, many times slower; capped at AVX2 it uses im2col + GEMM
    (docs/performance.md has the figures). Our own convolution (``src/kernels``, built by make)
    lets oneDNN choose blocked layouts and wants AVX-512; the cap applies to the whole oneDNN
    library (ours runs in MindSpore's), so it is left off when our kernels are built and
    ``conv_impl`` is not 'mindspore' (BatchNorm, ReLU and pooling are faster uncapped too),
    and off x86-64. oneDNN reads the variable once, when the library loads, so this must run before
    ``import mindspore``. GPU and Ascend kernels do not use oneDNN.
    """
    if ONEDNN_ISA_VARIABLE in os.environ:
        return os.environ[ONEDNN_ISA_VARIABLE]
    if not cpu_info().x86:   # oneDNN's Arm kernels have no such fallback
        return None
    if config.conv_impl != "mindspore" and kernel_library_usable():
        return None
    if "mindspore" in sys.modules:
        warnings.warn(f"mindspore was imported before src.device.prepare_process: "
                      f"{ONEDNN_ISA_VARIABLE} cannot take effect and CPU convolutions may run "
                      "~35x slower", stacklevel=2)
    os.environ[ONEDNN_ISA_VARIABLE] = "AVX2"
    return "AVX2"


def limit_malloc_arenas(arenas: int) -> int:
    """Cap glibc's malloc arenas (0: one per core); returns the cap set, 0 where the C library
    has no ``mallopt`` (not glibc).

    Why: every epoch builds a new data pipeline whose threads allocate numpy arrays; glibc gives
    new threads new arenas up to 8 per core, and memory freed in them is kept, so a long run's
    resident memory grew a few MB an epoch (docs/performance.md). Arenas made later obey the
    cap, so this runs before MindSpore starts its threads."""
    import ctypes
    import ctypes.util

    arenas = arenas or os.cpu_count() or 1
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return 0
    return arenas if mallopt(M_ARENA_MAX, arenas) == 1 else 0


def prepare_process(config: Config):
    """What must be settled before MindSpore loads, from the config alone: the oneDNN cap
    (``cap_onednn_isa``), the thread count of our kernels (``conv_threads``, read by the kernel
    library from ``KERNEL_THREADS_VARIABLE`` when it loads; 0 lets it take every core) and the
    malloc arenas (``limit_malloc_arenas``). Every entry point calls it right after parsing the
    config (``src.cli``)."""
    os.environ[KERNEL_THREADS_VARIABLE] = str(config.conv_threads)
    limit_malloc_arenas(config.malloc_arenas)
    return cap_onednn_isa(config)


def hardware_problem(config: Config):
    """Why this machine cannot run what ``config`` asks for (None when it can), found before
    any work: bfloat16 convolutions on a CPU (or under an ``ONEDNN_MAX_CPU_ISA`` cap) without
    native bfloat16 arithmetic, or a cap value oneDNN would ignore; then what the device and the
    data workers need of the host (``src.prerequisites``: CUDA and cuDNN, CANN, shared
    memory)."""
    cap_problem = unknown_cap_problem(os.environ.get(ONEDNN_ISA_VARIABLE))
    if cap_problem:
        return cap_problem
    platform = resolve_platform(config.run_platform)
    bf16 = config.conv_dtype == "bfloat16" and platform == "CPU"
    return (cpu_info().bf16_refusal() if bf16 else None) or prerequisite_problem(config, platform)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB: Linux's VmHWM, which starts afresh in
    a new program (getrusage's maxrss keeps the parent's peak across fork and exec), else
    getrusage."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident memory now, MB (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def detect_platform():
    """Best available device without importing MindSpore: Ascend, then GPU, then CPU."""
    if glob.glob("/dev/davinci[0-9]*"):
        return "Ascend"
    if glob.glob("/dev/nvidia[0-9]*") or shutil.which("nvidia-smi"):
        return "GPU"
    return "CPU"


def resolve_platform(name):
    """Turn a user's platform name ('auto', 'cpu', 'GPU', ...) into one of PLATFORMS."""
    if name is None or str(name).lower() == "auto":
        return detect_platform()
    for platform in PLATFORMS:
        if str(name).lower() == platform.lower():
            return platform
    raise ValueError(f"unknown platform {name!r}: expected auto, {', '.join(PLATFORMS)}")


def init_device(platform, device_id=0, seed=1, ascend_precision_mode="allow_fp32_to_fp16",
                jit_level="auto"):
    """Select the device, switch to GRAPH_MODE (at ``jit_level`` unless 'auto') and seed
    MindSpore and numpy. On Ascend the operator precision mode is set explicitly (MindSpore
    2.10's default differs between its own documents and SoCs): the reference ran its
    convolutions in fp16 there.

    Returns the platform actually in use.
    """
    import mindspore as ms
    import numpy as np

    platform = resolve_platform(platform)
    if platform == "CPU":
        ms.set_device("CPU")
    else:
        ms.set_device(platform, int(device_id))
    if platform == "Ascend":
        ms.device_context.ascend.op_precision.precision_mode(ascend_precision_mode)
    ms.set_context(mode=ms.GRAPH_MODE)
    if jit_level != "auto":
        ms.set_context(jit_config={"jit_level": jit_level})
    ms.set_seed(int(seed))
    np.random.seed(int(seed))
    return platform


def init_distributed():
    """Join the job MindSpore's launcher started (msrun / dynamic cluster on CPU and GPU, a
    rank table on Ascend) and switch to data parallel with averaged gradients.

    Returns (rank, world size), read from MindSpore, never from flags that could disagree.
    The CPU collectives' timeout gets this project's default unless the environment sets it
    (``src.train.agreement.set_collective_timeout``; an unusable value is refused here).
    """
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    from src.train.agreement import set_collective_timeout

    set_collective_timeout(os.environ)
    init()
    rank, world = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                 gradients_mean=True, device_num=world)
    return rank, world


@dataclass(frozen=True)
class Run:
    """Where a run writes, what it runs on, and which process of how many it is."""

    output_dir: str
    platform: str
    rank: int = 0
    world: int = 1

    @property
    def is_main(self):
        return self.rank == 0


def start_run(config: Config, default_output_dir: str, distribute: bool = False,
              save: bool = True) -> Run:
    """Device set-up (and joining a distributed job), plus the run's output folder with its
    resolved ``config.yaml`` written by the main process (unless ``save`` is False: the caller
    writes it with ``save_run_config`` once it knows the folder may take it)."""
    output_dir = config.output_dir or default_output_dir
    platform = init_device(config.run_platform, config.device_id, config.seed,
                           config.ascend_precision_mode, config.jit_level)
    rank, world = init_distributed() if distribute else (0, 1)
    run = Run(output_dir, platform, rank, world)
    if save:
        save_run_config(config, run)
    return run


def save_run_config(config: Config, run):
    """The run's resolved ``config.yaml`` (main process only); again when a value is resolved
    later (num_classes from the data)."""
    if run.is_main:
        os.makedirs(run.output_dir, exist_ok=True)
        config.replace(output_dir=run.output_dir, run_platform=run.platform).save(
            os.path.join(run.output_dir, "config.yaml"))
