"""What must be set before MindSpore loads comes from the config (``src.device.prepare_process``,
called by every entry script through ``src.cli``): the oneDNN ISA cap, never overriding the
user's, and the kernels' thread count."""
import os

import pytest

from src.device import resolve_platform
from tests.conftest import ROOT, X86, run_script

# A stand-in entry script: src.cli.run parses the config, prepares the process, then imports
# MindSpore and builds the detector, printing what it runs on.
PROBE = """
import os, sys
sys.path.insert(0, {root!r})
from src.cli import run
assert "mindspore" not in sys.modules

def main(config):
    from src.model import build_ssd, conv_description
    print(os.environ.get("ONEDNN_MAX_CPU_ISA"), os.environ["SSD_CONV_THREADS"],
          conv_description(build_ssd(config)) if {build} else "")

sys.exit(run(main, "", {argv!r}))
"""


def probe(argv, env=None, build=False):
    """The probe's output words, run without this process's cap or thread count (a machine
    whose tests run under ONEDNN_MAX_CPU_ISA must not decide the outcome)."""
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items()
             if k not in ("ONEDNN_MAX_CPU_ISA", "SSD_CONV_THREADS")}
    result = subprocess.run([sys.executable, "-c", PROBE.format(root=ROOT, argv=argv,
                                                                  build=build)],
                            cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**clean, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("argv, env, cap", [
    ([], {}, "None"),
    (["--conv_impl", "mindspore"], {}, "AVX2"),
    ([], {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "AVX512_CORE"),
    (["--conv_impl", "mindspore"], {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "AVX512_CORE"),
])
def test_the_isa_cap_follows_the_configured_convolutions(argv, env, cap):
    # The AVX2 cap is an x86 remedy: oneDNN's Arm kernels have no such slow fallback.
    assert probe(argv, env)[0] == (cap if X86 or env else "None")


def test_no_isa_cap_off_x86(monkeypatch):
    """An arm64 program (even one emulated on an x86 host, whose /proc/cpuinfo it reads) gets
    no AVX2 cap for MindSpore's convolutions."""
    import platform
    import warnings

    from src.config import Config
    from src.device import cap_onednn_isa

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cap_onednn_isa(Config(conv_impl="mindspore")) is None
    assert "ONEDNN_MAX_CPU_ISA" not in os.environ
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    with warnings.catch_warnings():    # "mindspore was imported before": so it may be here
        warnings.simplefilter("ignore", UserWarning)
        assert cap_onednn_isa(Config(conv_impl="mindspore")) == "AVX2"


def test_conv_impl_from_a_yaml_file_really_runs_mindspore_convolutions(tmp_path):
    path = tmp_path / "mindspore.yaml"
    path.write_text("conv_impl: mindspore\nconv_threads: 2\nnum_classes: 3\n")
    cap, threads, *description = probe(["--config", str(path)], build=True)
    assert (cap, threads, " ".join(description)) == ("AVX2" if X86 else "None", "2", "MindSpore's")


def test_platform_names():
    assert resolve_platform("cpu") == "CPU" and resolve_platform("ascend") == "Ascend"
    assert resolve_platform("auto") in ("CPU", "GPU", "Ascend")
    with pytest.raises(ValueError, match="TPU"):
        resolve_platform("TPU")


def test_malloc_arenas_are_capped_in_a_glibc_process():
    """limit_malloc_arenas reports the cap glibc accepted (0 where mallopt is missing); the
    30-epoch measurement behind it is in docs/performance.md."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not a glibc system ({platform.libc_ver()}): no malloc arenas to cap")
    code = ("import sys; sys.path.insert(0, {root!r}); from src.device import "
            "limit_malloc_arenas as cap; print(cap(3), cap(0))").format(root=ROOT)
    result = run_script(["-c", code], timeout=60)
    assert result.stdout.split() == ["3", str(os.cpu_count())], result.stderr
