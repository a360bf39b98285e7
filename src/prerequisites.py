"""What the host must provide before MindSpore starts, checked by every entry point
(``src.device.hardware_problem``): on GPU the CUDA and cuDNN that MindSpore 2.10's GPU plugin is
built for, on Ascend CANN's environment and version, and for worker processes the shared memory
they pass rows through. Each missing piece otherwise fails inside ``ms.set_device`` or a data
worker, in MindSpore's words.

The checks see the machine only through a ``Host`` (environment, files, commands), which tests
replace. Nothing here imports MindSpore.
"""
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

from src.config import Config
from src.data.feed import feed_settings

# MindSpore 2.10's wheel holds GPU plugins for these CUDA versions only (mindspore/lib/plugin/
# gpu11.1, gpu11.6), each linked against cuDNN 8; its own check lists the CANN versions
# (mindspore/run_check/_check_version.py). tests/test_prerequisites.py compares both with the
# installed wheel.
CUDA_VERSIONS = ((11, 1), (11, 6))
CUDNN_MAJOR = 8
HOPPER_CUDNN = (8, 6)       # the first cuDNN with Hopper (compute capability 9.0) kernels
CANN_VERSIONS = ((8, 2), (8, 3), (8, 5), (9, 0), (9, 1))
CANN_SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
CUDA_FIX = ("install CUDA 11.6 with cuDNN 8 (8.6 or later on H100/H200) and point CUDA_HOME at "
            "it (export CUDA_HOME=/usr/local/cuda-11.6 "
            "LD_LIBRARY_PATH=/usr/local/cuda-11.6/lib64:$LD_LIBRARY_PATH), or run on the CPU "
            "with --run_platform CPU")
SYSTEM_INCLUDE_DIRS = ("/usr/include", "/usr/include/x86_64-linux-gnu",
                       "/usr/include/aarch64-linux-gnu", "/usr/local/cuda/include")
SYSTEM_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                   "/usr/local/cuda/lib64")
# /dev/shm used by Python's multiprocessing for MindSpore 2.10's worker processes (their
# semaphores and one shared counter): measured 48 KB with one worker and 68 KB with two, so
# these bounds leave room. The rows themselves go through System V segments, not /dev/shm.
DEV_SHM_BASE_BYTES = 64 * 1024
DEV_SHM_WORKER_BYTES = 32 * 1024
MB = 2 ** 20


def run_command(argv: Sequence[str]) -> Optional[str]:
    """Standard output of ``argv``, or None when it cannot start, fails or takes over 10 s."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def installed_gpu_plugins() -> tuple:
    """The CUDA versions of the GPU plugins in the installed MindSpore wheel
    (mindspore/lib/plugin/gpuX.Y), found without importing it: (11, 1) and (11, 6) in
    MindSpore 2.10's x86-64 wheel, none in its aarch64 wheel."""
    import importlib.util

    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        return ()
    plugin_dir = os.path.join(spec.submodule_search_locations[0], "lib", "plugin")
    try:
        names = os.listdir(plugin_dir)
    except OSError:
        return ()
    return tuple(sorted(tuple(map(int, match.group(1, 2))) for name in names
                        if (match := re.fullmatch(r"gpu(\d+)\.(\d+)", name))))


def read_text(path: str) -> Optional[str]:
    """The text of a file (its first MB), or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read(MB)
    except OSError:
        return None


@dataclass(frozen=True)
class Host:
    """The machine as the checks see it: its environment (PATH included), commands, files and
    /dev/shm. ``root`` prefixes the system paths (/usr/include, /proc/sys/kernel ...), so that
    tests can lay out a fake system in a folder."""

    env: Mapping[str, str]
    run: Callable[[Sequence[str]], Optional[str]] = run_command
    read_file: Callable[[str], Optional[str]] = read_text
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs
    root: str = "/"
    gpu_plugins: Callable[[], tuple] = installed_gpu_plugins

    def system(self, path: str) -> str:
        """``path`` (absolute) under ``root``."""
        return os.path.join(self.root, path.lstrip("/"))

    def which(self, name: str, extra: Sequence[str] = ()) -> Optional[str]:
        """The program ``name`` on this environment's PATH (then in ``extra`` folders)."""
        folders = [*self.env.get("PATH", "").split(os.pathsep), *map(self.system, extra)]
        return shutil.which(name, path=os.pathsep.join(f for f in folders if f))


class Finding(NamedTuple):
    """A check's verdict: what stops the run (None: nothing) and notes worth a warning."""

    problem: Optional[str] = None
    notes: tuple = ()


class Found(NamedTuple):
    """A version and where it was read."""

    version: tuple
    source: str


def version_of(text: Optional[str], pattern: str) -> Optional[tuple]:
    """The integers of ``pattern``'s groups in ``text`` (unmatched trailing groups left out)."""
    match = re.search(pattern, text or "", re.MULTILINE)
    if not match:
        return None
    return tuple(int(group) for group in match.groups() if group is not None)


def spelled(version: tuple) -> str:
    """(8, 9, 2) as 8.9.2."""
    return ".".join(map(str, version))


def cuda_version_in(home: str, host: Host) -> Optional[Found]:
    """The CUDA version of the toolkit in ``home``: version.json (11.1 and later),
    version.txt (earlier), ``bin/nvcc --version``, or a ``libcudart.so.X.Y.Z`` in lib64."""
    text = host.read_file(os.path.join(home, "version.json"))
    if text:
        try:
            found = version_of(json.loads(text)["cuda"]["version"], r"^(\d+)\.(\d+)")
        except (ValueError, KeyError, TypeError):
            found = None
        if found:
            return Found(found, os.path.join(home, "version.json"))
    found = version_of(host.read_file(os.path.join(home, "version.txt")),
                       r"CUDA Version:?\s*(\d+)\.(\d+)")
    if found:
        return Found(found, os.path.join(home, "version.txt"))
    nvcc = os.path.join(home, "bin", "nvcc")
    if os.path.isfile(nvcc):
        found = version_of(host.run([nvcc, "--version"]), r"release (\d+)\.(\d+)")
        if found:
            return Found(found, f"{nvcc} --version")
    # libcudart.so.11.0 is the soname of every CUDA 11: only a full X.Y.Z name tells.
    for library in sorted(glob.glob(os.path.join(home, "lib64", "libcudart.so.*.*.*"))):
        found = version_of(os.path.basename(library), r"^libcudart\.so\.(\d+)\.(\d+)\.\d+$")
        if found:
            return Found(found, library)
    return None


def find_cuda(host: Host) -> tuple:
    """(CUDA home or None, Found or None, how the home was found): CUDA_HOME, else CUDA_PATH,
    else the toolkit of the ``nvcc`` on PATH, else /usr/local/cuda."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        home = host.env.get(name)
        if home:
            return home, cuda_version_in(home, host), f"{name}={home}"
    nvcc = host.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        found = version_of(host.run([nvcc, "--version"]), r"release (\d+)\.(\d+)")
        return (home, Found(found, f"{nvcc} --version") if found else cuda_version_in(home, host),
                f"nvcc on PATH: {nvcc}")
    home = host.system("/usr/local/cuda")
    if os.path.isdir(home):
        return home, cuda_version_in(home, host), home
    return None, None, ""


def cudnn_in_headers(folders: Sequence[str], host: Host) -> Optional[Found]:
    """cuDNN's version from cudnn_version*.h (cuDNN 8 and later) or cudnn.h in ``folders``."""
    for folder in folders:
        for header in [*sorted(glob.glob(os.path.join(folder, "cudnn_version*.h"))),
                       os.path.join(folder, "cudnn.h")]:
            text = host.read_file(header)
            major = version_of(text, r"^#define CUDNN_MAJOR\s+(\d+)")
            if major:
                minor = version_of(text, r"^#define CUDNN_MINOR\s+(\d+)") or (0,)
                patch = version_of(text, r"^#define CUDNN_PATCHLEVEL\s+(\d+)") or (0,)
                return Found(major + minor + patch, header)
    return None


def cudnn_in_libraries(folders: Sequence[str]) -> Optional[Found]:
    """cuDNN's version from the names of libcudnn.so.N[.M.P] files in ``folders`` (the most
    precise name of the first folder that has one; a bare ``.so.N`` gives the major only)."""
    for folder in folders:
        versions = {}
        for library in glob.glob(os.path.join(folder, "libcudnn.so.*")):
            for name in {os.path.basename(library), os.path.basename(os.path.realpath(library))}:
                found = version_of(name, r"^libcudnn\.so\.(\d+)(?:\.(\d+))?(?:\.(\d+))?$")
                if found:
                    versions[found] = library
        if versions:
            best = max(versions, key=lambda version: (len(version), version))
            return Found(best, versions[best])
    return None


def cudnn_in_loader_cache(host: Host) -> Optional[Found]:
    """cuDNN as the dynamic loader's cache (``ldconfig -p``) lists it."""
    ldconfig = host.which("ldconfig", extra=("/sbin", "/usr/sbin"))
    listing = host.run([ldconfig, "-p"]) if ldconfig else None
    folders = re.findall(r"^\s*libcudnn\.so\.\d+\s.*=>\s*(\S+)/libcudnn\.so\.\d+\s*$",
                         listing or "", re.MULTILINE)
    return cudnn_in_libraries(list(dict.fromkeys(folders)))


def find_cudnn(cuda_home: str, host: Host) -> Optional[Found]:
    """cuDNN's version as the GPU plugin would load it: headers and libraries of the CUDA
    home, LD_LIBRARY_PATH, the system's folders, the loader's cache."""
    library_path = [f for f in host.env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if f]
    system_includes = [host.system(f) for f in SYSTEM_INCLUDE_DIRS]
    system_libs = [host.system(f) for f in SYSTEM_LIB_DIRS]
    return (cudnn_in_headers([os.path.join(cuda_home, "include")], host)
            or cudnn_in_libraries([os.path.join(cuda_home, "lib64"),
                                   os.path.join(cuda_home, "lib"), *library_path])
            or cudnn_in_headers(system_includes, host)
            or cudnn_in_libraries(system_libs)
            or cudnn_in_loader_cache(host))


def hopper_gpus(host: Host) -> list:
    """Names of the GPUs of compute capability 9.x (H100, H200) that nvidia-smi lists."""
    smi = host.which("nvidia-smi")
    listing = host.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"]) \
        if smi else None
    names = []
    for line in (listing or "").splitlines():
        name, _, capability = line.rpartition(",")
        if re.fullmatch(r"\s*9\.\d+\s*", capability):
            names.append(f"{name.strip()} (compute capability {capability.strip()})")
    return names


def check_gpu(host: Host) -> Finding:
    """CUDA 11.1 or 11.6 with cuDNN 8, cuDNN 8.6 or later on Hopper GPUs (which then run every
    kernel JIT-compiled from PTX: a note), and first a MindSpore wheel that has a GPU plugin
    at all (its aarch64 wheel has none)."""
    if not host.gpu_plugins():
        return Finding(f"running on GPU, but the installed MindSpore has no GPU plugin "
                       f"(mindspore/lib/plugin/gpuX.Y): MindSpore 2.10 ships GPU support only in "
                       f"its x86-64 wheel, and this is {platform.machine()}. Train on GPU from "
                       f"an x86-64 host, or here with --run_platform CPU (or Ascend)")
    home, cuda, how = find_cuda(host)
    supported = " and ".join(spelled(v) for v in CUDA_VERSIONS)
    if home is None:
        return Finding(f"running on GPU, but no CUDA toolkit was found (CUDA_HOME and CUDA_PATH "
                       f"unset, no nvcc on PATH, no /usr/local/cuda): MindSpore 2.10's GPU "
                       f"plugin needs CUDA {supported} with cuDNN {CUDNN_MAJOR}: {CUDA_FIX}")
    notes = []
    if cuda is None:
        notes.append(f"the CUDA version of {how} is not known (no version.json, version.txt, "
                     f"bin/nvcc or lib64/libcudart.so.X.Y.Z there): MindSpore 2.10's GPU plugin "
                     f"needs CUDA {supported}")
    elif cuda.version[:2] not in CUDA_VERSIONS:
        return Finding(f"CUDA {spelled(cuda.version)} found ({how}; {cuda.source}), but "
                       f"MindSpore 2.10's GPU plugin exists only for CUDA {supported} with "
                       f"cuDNN {CUDNN_MAJOR}: {CUDA_FIX}")
    cudnn = find_cudnn(home, host)
    if cudnn is None:
        return Finding(f"cuDNN not found for the CUDA of {how} (no cudnn_version.h in "
                       f"{os.path.join(home, 'include')} or /usr/include, no libcudnn.so."
                       f"{CUDNN_MAJOR} in {os.path.join(home, 'lib64')}, LD_LIBRARY_PATH or "
                       f"the loader's cache): MindSpore 2.10's GPU plugin needs cuDNN "
                       f"{CUDNN_MAJOR}: {CUDA_FIX}")
    if cudnn.version[0] != CUDNN_MAJOR:
        return Finding(f"cuDNN {spelled(cudnn.version)} found ({cudnn.source}), but MindSpore "
                       f"2.10's GPU plugin needs cuDNN {CUDNN_MAJOR}: {CUDA_FIX}")
    hopper = hopper_gpus(host)
    if hopper and len(cudnn.version) < 2:
        notes.append(f"{hopper[0]} needs cuDNN {spelled(HOPPER_CUDNN)} or later; "
                     f"{cudnn.source} does not tell which cuDNN {CUDNN_MAJOR}.x it is")
    elif hopper and cudnn.version[:2] < HOPPER_CUDNN:
        return Finding(f"{hopper[0]} needs cuDNN {spelled(HOPPER_CUDNN)} or later, found cuDNN "
                       f"{spelled(cudnn.version)} ({cudnn.source}): install cuDNN 8.9 for "
                       f"CUDA 11.x into the CUDA of {how}, or put its lib folder first on "
                       f"LD_LIBRARY_PATH")
    if hopper:
        notes.append(f"{hopper[0]}: MindSpore's CUDA 11 kernels hold no machine code for this "
                     f"GPU, so the driver JIT-compiles each from PTX when first used: the "
                     f"first run starts slowly; later runs read the compiled kernels from "
                     f"~/.nv/ComputeCache")
    return Finding(None, tuple(notes))


def cann_version(home: str, host: Host) -> Optional[Found]:
    """CANN's version from its version.info files: compiler/ (where MindSpore reads it), the
    home itself, or one of its folders; 'Version=8.3.RC1' is (8, 3)."""
    candidates = [os.path.join(home, "compiler", "version.info"),
                  os.path.join(home, "version.info"),
                  *sorted(glob.glob(os.path.join(home, "*", "version.info")))]
    for path in candidates:
        found = version_of(host.read_file(path), r"^\s*[Vv]ersion\s*=\s*(\d+)\.(\d+)")
        if found:
            return Found(found, path)
    return None


def check_ascend(host: Host) -> Finding:
    """CANN's environment loaded (ASCEND_HOME_PATH or ASCEND_TOOLKIT_HOME, set by its
    set_env.sh) and a CANN version MindSpore 2.10 accepts."""
    name = next((n for n in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME") if host.env.get(n)),
                None)
    accepted = ", ".join(spelled(v) for v in CANN_VERSIONS)
    if name is None:
        return Finding(f"running on Ascend, but CANN's environment is not loaded "
                       f"(ASCEND_HOME_PATH and ASCEND_TOOLKIT_HOME unset): run "
                       f"`source {CANN_SET_ENV}` (or the set_env.sh of your CANN install) "
                       f"before python; MindSpore 2.10 accepts CANN {accepted}")
    home = host.env[name]
    if not os.path.isdir(home):
        return Finding(f"{name}={home} is not a folder: CANN is not installed there; run the "
                       f"set_env.sh of your CANN install (e.g. `source {CANN_SET_ENV}`)")
    found = cann_version(home, host)
    if found is None:
        return Finding(None, (f"the CANN version under {name}={home} is not known (no "
                              f"version.info with a Version= line): MindSpore 2.10 accepts "
                              f"CANN {accepted}",))
    if found.version not in CANN_VERSIONS:
        return Finding(f"CANN {spelled(found.version)} found ({found.source}), but MindSpore "
                       f"2.10 accepts only CANN {accepted}: install one of them and run its "
                       f"set_env.sh (e.g. `source {CANN_SET_ENV}`)")
    return Finding()


def train_row_bytes(config: Config) -> int:
    """Bytes of one row that a training worker process returns (``TrainTransform``): the
    uint8 image at img_shape (normalised later, in the main process, whatever input_dtype
    says), float32 box offsets and int32 labels per default box, num_match, img_id."""
    height, width = config.img_shape
    return int(height) * int(width) * 3 + config.num_ssd_boxes * (4 * 4 + 4) + 4 + 8


def kernel_value(name: str, host: Host) -> Optional[int]:
    """An integer of /proc/sys/kernel/``name``, or None."""
    found = version_of(host.read_file(host.system(f"/proc/sys/kernel/{name}")), r"^\s*(\d+)")
    return found[0] if found else None


def fewer_workers(workers: int, fits: int) -> str:
    """The flags that make the data workers fit: fewer of them, or threads."""
    fewer = f"fewer workers (--num_parallel_workers {fits}) or " if 0 < fits < workers else ""
    return f"{fewer}threads instead of processes (--data_workers threads)"


def check_worker_memory(workers: int, row_bytes: int, host: Host) -> Finding:
    """Shared memory for ``workers`` data worker processes of MindSpore 2.10: /dev/shm for
    Python's multiprocessing (semaphores, a counter), and one System V segment per worker
    that holds the row it works on (at least ``row_bytes``; more for a larger decoded source
    image) within the kernel's shmmax, shmall and shmmni."""
    need = DEV_SHM_BASE_BYTES + workers * DEV_SHM_WORKER_BYTES
    try:
        stats = host.statvfs(host.system("/dev/shm"))
    except OSError as exc:
        return Finding(f"/dev/shm cannot be used ({exc.strerror or exc}): the {workers} data "
                       f"worker processes need it (Python's multiprocessing keeps its "
                       f"semaphores there); mount a tmpfs on /dev/shm (docker run --shm-size "
                       f"64m) or use {fewer_workers(workers, 0)}")
    free = stats.f_bavail * stats.f_frsize
    if free < need:
        fits = max(0, (free - DEV_SHM_BASE_BYTES) // DEV_SHM_WORKER_BYTES)
        return Finding(f"/dev/shm has {free / MB:.2f} MB free, but the {workers} data worker "
                       f"processes need {need / MB:.2f} MB there (Python's multiprocessing "
                       f"keeps their semaphores in it): free or enlarge it (docker run "
                       f"--shm-size 64m), or use {fewer_workers(workers, fits)}")
    page = os.sysconf("SC_PAGE_SIZE")
    shmmax, shmall, shmmni = (kernel_value(n, host) for n in ("shmmax", "shmall", "shmmni"))
    # (sysctl name, its value, what the workers need, how many workers it allows)
    limits = (("kernel.shmmax", shmmax, row_bytes, 0),
              ("kernel.shmall", None if shmall is None else shmall * page, workers * row_bytes,
               (shmall or 0) * page // row_bytes),
              ("kernel.shmmni", shmmni, workers, shmmni or 0))
    for name, value, needed, fits in limits:
        if value is not None and value < needed:
            unit = "segments" if name == "kernel.shmmni" else "bytes"
            return Finding(f"{name} is {value} {unit} (/proc/sys/{name.replace('.', '/')}), "
                           f"but the {workers} data worker processes need at least {needed} "
                           f"{unit} of System V shared memory (one segment per worker, each "
                           f"holding a training row of at least {row_bytes / MB:.2f} MB): raise "
                           f"it (sysctl -w {name}=...; in a container docker run --sysctl "
                           f"{name}=... or --ipc=host), or use "
                           f"{fewer_workers(workers, fits)}")
    return Finding()


def prerequisite_problem(config: Config, platform: str,
                         host: Optional[Host] = None) -> Optional[str]:
    """The first prerequisite that ``config`` on ``platform`` lacks on this host (None: all
    there); the checks' notes become warnings."""
    host = host or Host(os.environ)
    findings = []
    if platform == "GPU":
        findings.append(check_gpu(host))
    elif platform == "Ascend":
        findings.append(check_ascend(host))
    if feed_settings(config, platform)[0]:
        findings.append(check_worker_memory(config.workers, train_row_bytes(config), host))
    for finding in findings:
        if finding.problem:
            return finding.problem
        for note in finding.notes:
            warnings.warn(note, stacklevel=2)
    return None
