"""Shared fixtures: the repository root on sys.path, MindSpore on CPU in graph mode, demo data."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from src.config import Config  # noqa: E402
from src.cpu import cpu_info  # noqa: E402
from src.device import prepare_process  # noqa: E402

prepare_process(Config())  # what the entry scripts do before MindSpore loads (src.cli)
X86 = cpu_info().x86
# Our CPU kernels (src/kernels, and the C++ NMS in them) are x86-64 code: make builds them only
# there, and their tests skip elsewhere, saying so.
needs_x86_kernels = pytest.mark.skipif(
    not X86, reason=f"needs our CPU kernels (src/kernels), built for x86-64 only; this "
                    f"processor is {cpu_info().arch}")


@pytest.fixture(scope="session")
def graph_cpu():
    """MindSpore on CPU in GRAPH_MODE, seeded."""
    from src.device import init_device

    return init_device("CPU", 0, 1)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo dataset in COCO layout (12 train images, 4 val images), made once."""
    from src.demo_data import generate

    root = tmp_path_factory.mktemp("demo")
    generate(str(root), 12, 4, seed=3)
    return str(root)


def run_script(args, cwd=ROOT, timeout=900, env=None):
    """Run a top-level script with the test's Python; returns the CompletedProcess."""
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
