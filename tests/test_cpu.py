"""The processor is read once (src/cpu.py): oneDNN's own answer agrees with ours, and bfloat16 is
refused before any work on a CPU (or under a cap) without native bfloat16 arithmetic."""
import glob
import json
import os
import subprocess
import sys
import time

import pytest

from src.cpu import cpu_info, parse_cpuinfo
from tests.conftest import ROOT, needs_x86_kernels, run_script

ZEN1 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7551 32-Core Processor
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
"""
SAPPHIRE_RAPIDS = (
    "vendor_id\t: GenuineIntel\n"
    "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
    "flags\t\t: sse4_1 sse4_2 avx fma avx2 avx_vnni avx512f avx512dq avx512bw avx512vl "
    "avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8\n"
)
ZEN4 = """vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: sse4_1 avx fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16
"""

KUNPENG_920 = """processor\t: 0
BogoMIPS\t: 200.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
jscvt fcma dcpop asimddp asimdfhm
CPU implementer\t: 0x48
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd01
CPU revision\t: 0
"""
ON_X86 = "x86_64"


def x86(text, cap=None):
    """The processor of a /proc/cpuinfo text for an x86-64 program (whatever runs the test)."""
    return parse_cpuinfo(text, cap, machine=ON_X86)


def test_arm64_is_read_from_the_program_not_from_an_emulators_host():
    """Under qemu an arm64 program reads the x86 host's /proc/cpuinfo: the architecture comes
    from the program, and no x86 level (nor the AVX2 cap's reason) applies to it."""
    kunpeng = parse_cpuinfo(KUNPENG_920, machine="aarch64")
    assert (kunpeng.vendor, kunpeng.model_name, kunpeng.x86) == ("HiSilicon", "Kunpeng-920", False)
    assert kunpeng.features() == "aarch64: NEON, no SVE, no BF16, no I8MM"
    assert kunpeng.effective_isa == "none" and not kunpeng.native_bf16
    assert "x86-64 only" in kunpeng.describe() and "x86-64 only" in kunpeng.bf16_refusal()
    emulated = parse_cpuinfo(SAPPHIRE_RAPIDS, machine="aarch64")
    assert emulated.model_name == "aarch64 processor" and not emulated.x86
    assert emulated.effective_isa == "none" and "AVX" not in emulated.describe()
    assert emulated.features() == "aarch64: features not readable from /proc/cpuinfo"
    assert "Intel" not in emulated.describe()
    assert x86(SAPPHIRE_RAPIDS).x86


def test_an_avx2_only_processor():
    cpu = x86(ZEN1)
    assert (cpu.vendor, cpu.model_name) == ("AuthenticAMD", "AMD EPYC 7551 32-Core Processor")
    assert cpu.effective_isa == "AVX2" and cpu.block == 8 and not cpu.native_bf16
    assert cpu.features() == "AVX2, no AVX-512, no AVX512-BF16, no AMX"
    refusal = cpu.bf16_refusal()
    assert "AMD EPYC 7551" in refusal and "neither AVX512-BF16 nor AMX" in refusal


def test_amx_and_avx512_bf16_processors():
    spr = x86(SAPPHIRE_RAPIDS)
    assert spr.effective_isa == "AVX512_CORE_AMX" and spr.block == 16
    assert spr.native_bf16 and spr.bf16_refusal() is None
    zen4 = x86(ZEN4)
    assert zen4.effective_isa == "AVX512_CORE_BF16" and zen4.native_bf16
    assert zen4.features() == "AVX2, AVX-512, AVX512-BF16, no AMX"


def test_the_cap_limits_what_onednn_may_use():
    capped = x86(SAPPHIRE_RAPIDS, cap="avx2")
    assert capped.effective_isa == "AVX2" and capped.block == 8 and not capped.native_bf16
    assert "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN below" in capped.bf16_refusal()
    assert x86(SAPPHIRE_RAPIDS, cap="AVX512_CORE").effective_isa == "AVX512_CORE"
    assert x86(SAPPHIRE_RAPIDS, cap="AVX10_1_512").effective_isa == "AVX512_CORE_FP16"
    assert x86(SAPPHIRE_RAPIDS, cap="ALL").effective_isa == "AVX512_CORE_AMX"
    assert x86(ZEN1, cap="AVX512_CORE_AMX").effective_isa == "AVX2"  # cap above the CPU


@pytest.mark.skipif(not cpu_info().x86, reason="oneDNN's x86 levels: this is not an x86-64 "
                    "processor")
@pytest.mark.parametrize("cap", ["", "AVX2", "AVX512_CORE", "AVX512_CORE_BF16"])
def test_our_reading_agrees_with_onednn(cap):
    """oneDNN's dnnl_get_effective_cpu_isa, in a fresh process (oneDNN reads the cap once)."""
    import mindspore

    library = glob.glob(os.path.join(os.path.dirname(mindspore.__file__), "lib", "libdnnl.so.3"))
    assert library, "MindSpore's bundled oneDNN not found"
    code = ("import ctypes, json; from src.cpu import cpu_info, ISA_LEVELS; "
            f"mask = ctypes.CDLL({library[0]!r}).dnnl_get_effective_cpu_isa(); "
            "print(json.dumps([cpu_info().effective_isa, "
            "[l.name for l in ISA_LEVELS if l.mask == mask]]))")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if cap:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    ours, theirs = json.loads(result.stdout)
    assert [ours] == theirs, result.stdout


def test_this_machine_is_described():
    cpu = cpu_info()
    described = cpu.as_dict()
    assert described["cpu_model"] == cpu.model_name != "unknown CPU"
    assert described["onednn_isa"] == cpu.effective_isa and "cpu_features" in described
    assert cpu.model_name in cpu.describe()
    # the ISA oneDNN runs on x86-64; elsewhere that our kernels do not run there
    assert (cpu.effective_isa if cpu.x86 else "x86-64 only") in cpu.describe()


@needs_x86_kernels
@pytest.mark.parametrize("script, extra", [
    ("benchmark.py", ["--mode", "infer"]),
    ("train.py", ["--data_url", "/nonexistent"]),
    ("eval.py", ["--data_url", "/nonexistent", "--checkpoint_path", "x.ckpt"]),
])
def test_bfloat16_is_refused_before_any_work_under_an_avx2_cap(script, extra, tmp_path):
    start = time.monotonic()
    result = run_script([script, *extra, "--conv_dtype", "bfloat16", "--run_platform", "CPU",
                         "--output_dir", str(tmp_path / "out")],
                        env={"ONEDNN_MAX_CPU_ISA": "AVX2"}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert cpu_info().model_name in result.stderr and "AVX512-BF16" in result.stderr
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - start < 60


def test_an_unknown_cap_is_an_error():
    result = run_script(["train.py", "--data_url", "/nonexistent"],
                        env={"ONEDNN_MAX_CPU_ISA": "AVX3"}, timeout=120)
    assert result.returncode == 2 and "ONEDNN_MAX_CPU_ISA='AVX3' is not an instruction set" \
        in result.stderr, result.stderr


def test_building_bfloat16_layers_is_refused_where_they_cannot_run():
    code = ("from src.model.layers import Layers\n"
            "try:\n    Layers.create('onednn', 'bfloat16'); print('built')\n"
            "except ValueError as exc: print(exc)")
    result = run_script(["-c", code], env={"ONEDNN_MAX_CPU_ISA": "AVX2"}, timeout=60)
    assert "needs native bfloat16 arithmetic" in result.stdout, result.stdout + result.stderr
