"""What the host must provide before MindSpore starts (``src.prerequisites``), checked against
fake machines: CUDA homes, cuDNN headers and libraries, nvcc and nvidia-smi stand-ins, CANN
homes, /dev/shm sizes and System V limits laid out under tmp_path."""
import importlib.util
import json
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

from src.config import Config
from src.cpu import cpu_info
from src.prerequisites import (
    CANN_VERSIONS,
    CUDA_VERSIONS,
    DEV_SHM_BASE_BYTES,
    DEV_SHM_WORKER_BYTES,
    Finding,
    Host,
    check_ascend,
    check_gpu,
    check_worker_memory,
    installed_gpu_plugins,
    prerequisite_problem,
    train_row_bytes,
)
from tests.conftest import run_script

MB = 2 ** 20
ACCEPTED_CANN = "8.2, 8.3, 8.5, 9.0, 9.1"


def script(path, text):
    """An executable stand-in program at ``path`` that prints ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}\nEOF\n")
    path.chmod(0o755)
    return path


def cuda_home(folder, version=None, version_txt=None, cudnn=None, cudnn_library=None):
    """A CUDA toolkit folder: version.json (or version.txt), include/cudnn_version.h for
    ``cudnn`` (major, minor, patch), lib64/libcudnn.so.<cudnn_library>."""
    folder.mkdir(parents=True)
    if version:
        (folder / "version.json").write_text(json.dumps(
            {"cuda": {"name": "CUDA SDK", "version": version}}))
    if version_txt:
        (folder / "version.txt").write_text(f"CUDA Version {version_txt}\n")
    if cudnn:
        cudnn_header(folder / "include", cudnn)
    if cudnn_library:
        (folder / "lib64").mkdir()
        (folder / "lib64" / f"libcudnn.so.{cudnn_library}").write_bytes(b"")
    return folder


def cudnn_header(folder, version, name="cudnn_version.h"):
    folder.mkdir(parents=True, exist_ok=True)
    major, minor, patch = version
    (folder / name).write_text(f"#define CUDNN_MAJOR {major}\n#define CUDNN_MINOR {minor}\n"
                               f"#define CUDNN_PATCHLEVEL {patch}\n"
                               "#define CUDNN_VERSION (CUDNN_MAJOR * 1000 + CUDNN_MINOR * 100)\n")


def free_shm(free_bytes):
    """A statvfs stand-in for /dev/shm with ``free_bytes`` available."""
    def statvfs(path):
        assert path.endswith("dev/shm"), path
        return SimpleNamespace(f_bavail=free_bytes // 4096, f_frsize=4096)
    return statvfs


def no_statvfs(path):
    raise AssertionError(f"statvfs({path}) called: the worker check should not run")


@pytest.fixture
def machine(tmp_path):
    """Host(**env) on an empty fake system: its own root, an empty bin folder as PATH."""
    root, bin_dir = tmp_path / "root", tmp_path / "bin"
    root.mkdir()
    bin_dir.mkdir()

    def make(statvfs=no_statvfs, **env):
        return Host({"PATH": str(bin_dir), **env}, statvfs=statvfs, root=str(root),
                    gpu_plugins=lambda: CUDA_VERSIONS)
    make.root, make.bin = root, bin_dir
    return make


# --- GPU: CUDA and cuDNN


def test_cuda_12_only_is_refused_naming_the_version_and_the_fix(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda-12.4", "12.4.1", cudnn=(9, 1, 0))
    problem = check_gpu(machine(CUDA_HOME=str(home))).problem
    assert problem and "CUDA 12.4 found" in problem and f"CUDA_HOME={home}" in problem
    assert "only for CUDA 11.1 and 11.6 with cuDNN 8" in problem
    assert "install CUDA 11.6 with cuDNN 8" in problem and "point CUDA_HOME at it" in problem
    assert "--run_platform CPU" in problem and "\n" not in problem


def test_cuda_11_6_with_cudnn_8_9_passes(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda-11.6", "11.6.2", cudnn=(8, 9, 2))
    assert check_gpu(machine(CUDA_HOME=str(home))) == Finding()


def test_a_mindspore_wheel_without_a_gpu_plugin_is_refused_first(machine, tmp_path):
    """MindSpore 2.10's aarch64 wheel has no lib/plugin/gpuX.Y: no CUDA install helps there."""
    home = cuda_home(tmp_path / "cuda-11.6", "11.6.2", cudnn=(8, 9, 2))
    host = machine(CUDA_HOME=str(home))
    problem = check_gpu(Host(host.env, root=host.root, gpu_plugins=lambda: ())).problem
    assert problem and "has no GPU plugin" in problem and "x86-64 wheel" in problem
    assert "--run_platform CPU" in problem and "\n" not in problem


def test_cuda_11_1_from_version_txt_and_cudnn_from_a_library_name_passes(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda-11.1", version_txt="11.1.105", cudnn_library="8.0.5")
    assert check_gpu(machine(CUDA_PATH=str(home))) == Finding()
    other = cuda_home(tmp_path / "cuda-10.2", version_txt="10.2.89", cudnn_library="8.0.5")
    assert "CUDA 10.2 found" in check_gpu(machine(CUDA_PATH=str(other))).problem


@pytest.mark.parametrize("release, refused", [("12.2", True), ("11.6", False)])
def test_the_nvcc_on_path_tells_the_version_without_cuda_home(machine, release, refused):
    nvcc = script(machine.root / "opt" / "cuda" / "bin" / "nvcc",
                  f"nvcc: NVIDIA (R) Cuda compiler driver\n"
                  f"Cuda compilation tools, release {release}, V{release}.124")
    cudnn_header(machine.root / "opt" / "cuda" / "include", (8, 6, 0))
    host = Host({"PATH": str(nvcc.parent)}, root=str(machine.root),
                gpu_plugins=lambda: CUDA_VERSIONS)
    problem = check_gpu(host).problem
    if refused:
        assert f"CUDA {release} found (nvcc on PATH: {nvcc}" in problem
    else:
        assert problem is None


def test_no_cuda_at_all_is_refused(machine):
    problem = check_gpu(machine()).problem
    assert "no CUDA toolkit was found" in problem and "CUDA_HOME" in problem


def test_missing_cudnn_is_refused(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda-11.6", "11.6.2")
    problem = check_gpu(machine(CUDA_HOME=str(home))).problem
    assert problem.startswith("cuDNN not found") and str(home / "include") in problem
    assert "LD_LIBRARY_PATH" in problem and "install CUDA 11.6 with cuDNN 8" in problem


def test_cudnn_9_is_refused(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda-11.6", "11.6.2", cudnn=(9, 1, 0))
    problem = check_gpu(machine(CUDA_HOME=str(home))).problem
    assert "cuDNN 9.1.0 found" in problem and "needs cuDNN 8" in problem


def test_cudnn_is_found_where_the_loader_finds_it(machine, tmp_path):
    """On LD_LIBRARY_PATH, in the system's include folders, or in ldconfig's cache."""
    home = cuda_home(tmp_path / "cuda-11.6", "11.6.2")
    libs = tmp_path / "pip-cudnn" / "lib"
    libs.mkdir(parents=True)
    (libs / "libcudnn.so.8").write_bytes(b"")
    assert check_gpu(machine(CUDA_HOME=str(home), LD_LIBRARY_PATH=str(libs))).problem is None

    cudnn_header(machine.root / "usr" / "include" / "x86_64-linux-gnu", (8, 9, 7),
                 name="cudnn_version_v8.h")
    assert check_gpu(machine(CUDA_HOME=str(home))).problem is None


def test_cudnn_in_the_loader_cache(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda-11.6", "11.6.2")
    libs = tmp_path / "opt-lib"
    libs.mkdir()
    (libs / "libcudnn.so.8.4.1").write_bytes(b"")
    (libs / "libcudnn.so.8").symlink_to("libcudnn.so.8.4.1")
    script(machine.root / "sbin" / "ldconfig",
           f"3 libs found in cache `/etc/ld.so.cache'\n"
           f"\tlibcudnn_ops_infer.so.8 (libc6,x86-64) => {libs}/libcudnn_ops_infer.so.8\n"
           f"\tlibcudnn.so.8 (libc6,x86-64) => {libs}/libcudnn.so.8\n")
    script(machine.bin / "nvidia-smi", "NVIDIA H100 80GB HBM3, 9.0")
    problem = check_gpu(machine(CUDA_HOME=str(home))).problem
    assert "found cuDNN 8.4.1" in problem and str(libs) in problem   # read from the link target


@pytest.mark.parametrize("cudnn, refused", [((8, 4, 1), True), ((8, 9, 2), False)])
def test_hopper_needs_cudnn_8_6_and_is_warned_about_ptx(machine, tmp_path, cudnn, refused):
    home = cuda_home(tmp_path / "cuda-11.6", "11.6.2", cudnn=cudnn)
    script(machine.bin / "nvidia-smi", "NVIDIA H100 80GB HBM3, 9.0\nNVIDIA H100 80GB HBM3, 9.0")
    finding = check_gpu(machine(CUDA_HOME=str(home)))
    if refused:
        assert "NVIDIA H100 80GB HBM3 (compute capability 9.0) needs cuDNN 8.6 or later, " \
               "found cuDNN 8.4.1" in finding.problem
        assert "cuDNN 8.9" in finding.problem
    else:
        assert finding.problem is None and len(finding.notes) == 1
        assert "JIT-compiles" in finding.notes[0] and "PTX" in finding.notes[0]


def test_older_gpus_take_any_cudnn_8(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda-11.6", "11.6.2", cudnn=(8, 4, 1))
    script(machine.bin / "nvidia-smi", "NVIDIA A100-SXM4-40GB, 8.0")
    assert check_gpu(machine(CUDA_HOME=str(home))) == Finding()


def test_an_unknown_cuda_version_is_a_note_not_a_refusal(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda", cudnn=(8, 5, 0))
    (home / "lib64").mkdir()
    (home / "lib64" / "libcudart.so.11.0").write_bytes(b"")   # every CUDA 11's soname
    finding = check_gpu(machine(CUDA_HOME=str(home)))
    assert finding.problem is None and "is not known" in finding.notes[0]


@pytest.mark.parametrize("runtime, refused", [("12.1.105", True), ("11.6.55", False)])
def test_a_runtime_only_install_tells_the_version_by_its_libcudart(machine, tmp_path, runtime,
                                                                   refused):
    home = cuda_home(tmp_path / "cuda", cudnn=(8, 5, 0))
    (home / "lib64").mkdir()
    (home / "lib64" / f"libcudart.so.{runtime}").write_bytes(b"")
    (home / "lib64" / f"libcudart.so.{runtime.split('.')[0]}").symlink_to(
        f"libcudart.so.{runtime}")
    finding = check_gpu(machine(CUDA_HOME=str(home)))
    if refused:
        assert f"CUDA {runtime[:4]} found" in finding.problem
        assert f"libcudart.so.{runtime}" in finding.problem
    else:
        assert finding == Finding()


# --- Ascend: CANN


def test_missing_cann_environment_is_refused_naming_set_env(machine):
    problem = check_ascend(machine()).problem
    assert "ASCEND_HOME_PATH" in problem
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in problem


def cann_home(folder, line, where=("compiler",)):
    info = folder.joinpath(*where, "version.info")
    info.parent.mkdir(parents=True)
    info.write_text(f"{line}\ninnerversion=V100R001C23\n")
    return folder


def test_cann_8_0_is_refused_naming_the_accepted_versions(machine, tmp_path):
    home = cann_home(tmp_path / "latest", "Version=8.0.RC3")
    problem = check_ascend(machine(ASCEND_HOME_PATH=str(home))).problem
    assert "CANN 8.0 found" in problem and str(home / "compiler" / "version.info") in problem
    assert f"accepts only CANN {ACCEPTED_CANN}" in problem and "set_env.sh" in problem


@pytest.mark.parametrize("name, where", [("ASCEND_HOME_PATH", ("compiler",)),
                                         ("ASCEND_TOOLKIT_HOME", ()),
                                         ("ASCEND_HOME_PATH", ("x86_64-linux",))])
def test_cann_8_3_passes(machine, tmp_path, name, where):
    home = cann_home(tmp_path / "latest", "Version=8.3.RC1", where)
    assert check_ascend(machine(**{name: str(home)})) == Finding()


def test_a_cann_home_that_is_not_a_folder_is_refused(machine, tmp_path):
    problem = check_ascend(machine(ASCEND_HOME_PATH=str(tmp_path / "gone"))).problem
    assert f"ASCEND_HOME_PATH={tmp_path / 'gone'} is not a folder" in problem


def test_an_unknown_cann_version_is_a_note(machine, tmp_path):
    (tmp_path / "latest").mkdir()
    finding = check_ascend(machine(ASCEND_HOME_PATH=str(tmp_path / "latest")))
    assert finding.problem is None and ACCEPTED_CANN in finding.notes[0]


# --- worker processes: shared memory


def test_too_little_dev_shm_is_refused_naming_sizes_and_fixes(machine):
    need = DEV_SHM_BASE_BYTES + 8 * DEV_SHM_WORKER_BYTES
    free = DEV_SHM_BASE_BYTES + 2 * DEV_SHM_WORKER_BYTES
    problem = check_worker_memory(8, 444652, machine(statvfs=free_shm(free))).problem
    assert f"/dev/shm has {free / MB:.2f} MB free" in problem
    assert f"8 data worker processes need {need / MB:.2f} MB" in problem
    assert "docker run --shm-size" in problem
    assert "--num_parallel_workers 2" in problem and "--data_workers threads" in problem


def test_enough_dev_shm_passes(machine):
    """64 MB, a container's default, is plenty: MindSpore 2.10's workers pass their rows
    through System V segments, not /dev/shm."""
    assert check_worker_memory(8, 444652, machine(statvfs=free_shm(64 * MB))) == Finding()


def test_a_missing_dev_shm_is_refused(machine):
    def missing(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    problem = check_worker_memory(4, 444652, machine(statvfs=missing)).problem
    assert "/dev/shm cannot be used (No such file or directory)" in problem
    assert "--data_workers threads" in problem


def kernel_limits(root, **values):
    folder = root / "proc" / "sys" / "kernel"
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (folder / name).write_text(f"{value}\n")


def test_system_v_limits_below_the_workers_rows_are_refused(machine):
    page = os.sysconf("SC_PAGE_SIZE")
    row = 444652
    kernel_limits(machine.root, shmmax=32 * MB, shmall=(3 * row) // page + 1, shmmni=4096)
    problem = check_worker_memory(8, row, machine(statvfs=free_shm(64 * MB))).problem
    assert problem.startswith("kernel.shmall is") and "/proc/sys/kernel/shmall" in problem
    assert f"need at least {8 * row} bytes" in problem and "--ipc=host" in problem
    assert "docker run --sysctl kernel.shmall=" in problem
    assert "--num_parallel_workers 3" in problem

    kernel_limits(machine.root, shmmax=row - 1, shmall=2 ** 40)
    problem = check_worker_memory(8, row, machine(statvfs=free_shm(64 * MB))).problem
    assert problem.startswith(f"kernel.shmmax is {row - 1} bytes")
    assert "--num_parallel_workers" not in problem and "--data_workers threads" in problem

    kernel_limits(machine.root, shmmax=2 ** 40, shmmni=4)
    problem = check_worker_memory(8, row, machine(statvfs=free_shm(64 * MB))).problem
    assert "kernel.shmmni is 4 segments" in problem and "--num_parallel_workers 4" in problem

    kernel_limits(machine.root, shmmni=4096)
    assert check_worker_memory(8, row, machine(statvfs=free_shm(64 * MB))) == Finding()


def test_the_row_estimate_is_what_a_training_worker_returns():
    """train_row_bytes counts the bytes of TrainTransform's outputs (the System V segment of a
    worker holds at least that)."""
    from src.box_coder import BoxCoder
    from src.data.transforms import TrainTransform

    for config in (Config(), Config(img_shape=(320, 256))):
        image = np.zeros((120, 160, 3), np.uint8)
        gt = np.array([[10, 20, 60, 90, 1]], np.float32)
        outputs = TrainTransform(BoxCoder.from_config(config), config.img_shape)(
            image, gt, np.array([7], np.int64))
        assert sum(np.asarray(o).nbytes for o in outputs) == train_row_bytes(config)


# --- which checks a run gets


def test_each_platform_gets_its_checks(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda-12.4", "12.4.1")
    gpu_host = machine(CUDA_HOME=str(home))
    assert "CUDA 12.4" in prerequisite_problem(Config(data_workers="threads"), "GPU", gpu_host)
    assert prerequisite_problem(Config(), "CPU", gpu_host) is None   # threads on CPU: no check
    assert "set_env.sh" in prerequisite_problem(Config(data_workers="threads"), "Ascend",
                                                machine())
    small = machine(statvfs=free_shm(DEV_SHM_BASE_BYTES))
    assert "/dev/shm" in prerequisite_problem(Config(data_workers="processes"), "CPU", small)


def test_notes_become_warnings(machine, tmp_path):
    home = cuda_home(tmp_path / "cuda-11.6", "11.6.2", cudnn=(8, 9, 2))
    script(machine.bin / "nvidia-smi", "NVIDIA H200, 9.0")
    with pytest.warns(UserWarning, match="NVIDIA H200 .* JIT-compiles"):
        assert prerequisite_problem(Config(data_workers="threads"), "GPU",
                                    machine(CUDA_HOME=str(home))) is None


def test_the_versions_are_those_of_the_installed_mindspore():
    """CUDA_VERSIONS and CANN_VERSIONS as the installed wheel has them: its GPU plugins
    (lib/plugin/gpuX.Y) and the CANN list of its own check, read without importing it."""
    spec = importlib.util.find_spec("mindspore")
    package = spec.submodule_search_locations[0]
    # the x86-64 wheel's plugins; its aarch64 wheel has none (make check-aarch64 runs this)
    assert installed_gpu_plugins() == (CUDA_VERSIONS if cpu_info().x86 else ())
    with open(os.path.join(package, "run_check", "_check_version.py")) as source:
        text = source.read()
    ascend = text[text.index("class AscendEnvChecker"):]
    listed = re.search(r"self\.version = \[([^\]]*)\]", ascend).group(1)
    assert {tuple(map(int, v.split("."))) for v in re.findall(r'"([\d.]+)"', listed)} == set(
        CANN_VERSIONS)


# --- an entry point


def test_train_py_on_a_cuda_12_host_exits_2_before_importing_mindspore(tmp_path):
    home = cuda_home(tmp_path / "cuda-12.4", "12.4.1", cudnn=(9, 1, 0))
    (tmp_path / "bin").mkdir()
    result = run_script(["-X", "importtime", "train.py", "--run_platform", "GPU",
                         "--data_url", "/nonexistent", "--output_dir", str(tmp_path / "out")],
                        env={"CUDA_HOME": str(home), "PATH": str(tmp_path / "bin")}, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # the x86-64 wheel names the CUDA found; the aarch64 wheel has no GPU plugin at all
    expected = ("CUDA 12.4 found", "CUDA_HOME") if cpu_info().x86 else ("has no GPU plugin",) * 2
    assert len(errors) == 1 and all(words in errors[0] for words in expected), errors
    assert "Traceback" not in result.stderr
    imported = re.findall(r"^import time:.*\|\s*(\S+)\s*$", result.stderr, re.MULTILINE)
    assert "src.cli" in imported and "mindspore" not in imported
    assert not (tmp_path / "out").exists()
