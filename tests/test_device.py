"""The oneDNN ISA cap is set once, before MindSpore loads, and never overrides the user."""
import os

import pytest

from src.device import resolve_platform
from tests.conftest import run_script

PROBE = ("import sys, os; import src; assert 'mindspore' not in sys.modules; "
         "import mindspore; print(os.environ['ONEDNN_MAX_CPU_ISA'])")


def test_importing_src_caps_isa_before_mindspore():
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    env["SSD_CONV_IMPL"] = "mindspore"      # MindSpore's convolutions: the cap applies
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=env, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "AVX2"


def test_user_value_wins():
    result = run_script(["-c", PROBE], env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "AVX512_CORE"


def test_platform_names():
    assert resolve_platform("cpu") == "CPU" and resolve_platform("ascend") == "Ascend"
    assert resolve_platform("auto") in ("CPU", "GPU", "Ascend")
    with pytest.raises(ValueError, match="TPU"):
        resolve_platform("TPU")
