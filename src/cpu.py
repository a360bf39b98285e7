"""What this machine's processor offers, read once from /proc/cpuinfo, and what oneDNN may use
of it under a user's ``ONEDNN_MAX_CPU_ISA`` cap.

The architecture comes first, from the running program (``platform.machine()``), not from
/proc/cpuinfo: under qemu's user-mode emulation an arm64 program reads the x86 host's
/proc/cpuinfo. Off x86-64 only the processor's name and features are read (Arm's implementer
and part numbers name it: Kunpeng 920, Neoverse ...); no oneDNN x86 level applies there.

The instruction-set levels and their bit masks are oneDNN's (``dnnl_cpu_isa_t``): a level is
usable when the processor has all its flags and its mask lies inside the cap's mask, exactly
the rule oneDNN applies, so ``CpuInfo.effective_isa`` names the level oneDNN's kernels will
run (a test checks it against ``dnnl_get_effective_cpu_isa``). Nothing here imports MindSpore.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Optional

ONEDNN_ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"


@dataclass(frozen=True)
class IsaLevel:
    """One of oneDNN's CPU instruction-set levels."""

    name: str
    mask: int
    flags: tuple  # /proc/cpuinfo flags the level needs, on top of those of the levels it contains


# Ascending, as dnnl_cpu_isa_t; later names of a level (AVX512_CORE_FP16 = AVX10_1_512 ...) are
# accepted as caps through ISA_ALIASES.
ISA_LEVELS = (
    IsaLevel("SSE41", 0x1, ("sse4_1",)),
    IsaLevel("AVX", 0x3, ("avx",)),
    IsaLevel("AVX2", 0x7, ("avx2", "fma")),
    IsaLevel("AVX2_VNNI", 0xF, ("avx_vnni",)),
    IsaLevel("AVX2_VNNI_2", 0x1F, ("avx_vnni_int8", "avx_ne_convert")),
    IsaLevel("AVX512_CORE", 0x27, ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
    IsaLevel("AVX512_CORE_VNNI", 0x67, ("avx512_vnni",)),
    IsaLevel("AVX512_CORE_BF16", 0xE7, ("avx512_bf16",)),
    IsaLevel("AVX512_CORE_FP16", 0x1EF, ("avx512_fp16",)),
    IsaLevel("AVX512_CORE_AMX", 0xFEF, ("amx_tile", "amx_int8", "amx_bf16")),
    IsaLevel("AVX512_CORE_AMX_FP16", 0x1FEF, ("amx_fp16",)),
)
ISA_ALIASES = {"AVX10_1_512": "AVX512_CORE_FP16", "AVX10_1_512_AMX": "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16": "AVX512_CORE_AMX_FP16"}
NO_CAP = ("", "ALL", "DEFAULT")
# The levels at which oneDNN multiplies bfloat16 natively (AVX512-BF16 dot products, AMX tiles).
BF16_LEVELS = ("AVX512_CORE_BF16", "AVX512_CORE_AMX")
# What our kernels' blocked activations are made of: oneDNN's vector width in float32 lanes.
AVX512_BLOCK, AVX2_BLOCK = 16, 8
X86_64 = ("x86_64", "amd64")
# arm64 /proc/cpuinfo: "CPU implementer", and (implementer, "CPU part"), named as lscpu does.
ARM_IMPLEMENTERS = {"0x41": "ARM", "0x48": "HiSilicon", "0xc0": "Ampere", "0x61": "Apple",
                    "0x51": "Qualcomm", "0x46": "Fujitsu", "0x4e": "NVIDIA"}
ARM_PARTS = {("0x48", "0xd01"): "Kunpeng-920", ("0x48", "0xd02"): "Kunpeng-930",
             ("0x41", "0xd0c"): "Neoverse-N1", ("0x41", "0xd40"): "Neoverse-V1",
             ("0x41", "0xd49"): "Neoverse-N2", ("0x41", "0xd4f"): "Neoverse-V2",
             ("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd0b"): "Cortex-A76",
             ("0xc0", "0xac3"): "Ampere-1", ("0x41", "0xd8e"): "Neoverse-N3"}
# arm64 features worth naming (cpuinfo's "Features"): NEON, SVE, bfloat16 and int8 dot products.
ARM_FEATURES = (("asimd", "NEON"), ("sve", "SVE"), ("bf16", "BF16"), ("i8mm", "I8MM"))


def _level(name: str) -> IsaLevel:
    return next(level for level in ISA_LEVELS if level.name == name)


def _needed_flags(level: IsaLevel) -> set:
    """Every flag a level needs: its own and those of the levels whose masks it contains."""
    return {flag for other in ISA_LEVELS if other.mask & level.mask == other.mask
            for flag in other.flags}


def cap_mask(cap: Optional[str]) -> Optional[int]:
    """The bit mask of an ``ONEDNN_MAX_CPU_ISA`` value; None for no cap, and for a value oneDNN
    does not know (it ignores those: ``unknown_cap_problem`` says so)."""
    name = (cap or "").strip().upper()
    name = ISA_ALIASES.get(name, name)
    return next((level.mask for level in ISA_LEVELS if level.name == name), None)


def unknown_cap_problem(cap: Optional[str]) -> Optional[str]:
    """A message when ``cap`` is set to a value oneDNN does not know (None otherwise)."""
    if (cap or "").strip().upper() in NO_CAP or cap_mask(cap) is not None:
        return None
    known = ", ".join([level.name for level in ISA_LEVELS] + list(ISA_ALIASES) + ["ALL"])
    return (f"{ONEDNN_ISA_VARIABLE}={cap!r} is not an instruction set oneDNN knows (it would be "
            f"ignored): expected one of {known}")


@dataclass(frozen=True)
class CpuInfo:
    """The processor (vendor, model name, cpuinfo flags, architecture) and the oneDNN cap in
    force. ``flags`` are the architecture's own (x86 flags, or arm64 Features)."""

    vendor: str
    model_name: str
    flags: frozenset
    cap: Optional[str] = None
    arch: str = "x86_64"

    @property
    def x86(self) -> bool:
        """Whether this is an x86-64 processor (where our kernel library and oneDNN's x86
        levels apply)."""
        return self.arch.lower() in X86_64

    def has_level(self, name: str) -> bool:
        """Whether the processor has this oneDNN x86 level (whatever the cap says)."""
        return self.x86 and _needed_flags(_level(name)) <= self.flags

    def usable(self, name: str) -> bool:
        """Whether oneDNN may run this level here: the processor has it and the cap allows it."""
        mask = cap_mask(self.cap)
        level = _level(name)
        return self.has_level(name) and (mask is None or level.mask & mask == level.mask)

    @property
    def effective_isa(self) -> str:
        """The highest level oneDNN will use ('none' off x86)."""
        usable = [level.name for level in ISA_LEVELS if self.usable(level.name)]
        return usable[-1] if usable else "none"

    @property
    def native_bf16(self) -> bool:
        """Whether oneDNN can multiply in bfloat16 here (AVX512-BF16 or AMX, within the cap)."""
        return any(self.usable(name) for name in BF16_LEVELS)

    @property
    def block(self) -> int:
        """Channels per block of the blocked activation layout oneDNN's kernels prefer here:
        16 with AVX-512 (one zmm register of float32), else 8 (AVX2's ymm)."""
        return AVX512_BLOCK if self.usable("AVX512_CORE") else AVX2_BLOCK

    def features(self) -> str:
        """'AVX2, AVX-512, AVX512-BF16, no AMX' (x86-64) or 'aarch64: NEON, no SVE, ...': the
        features that matter here."""
        if not self.x86 and not self.flags:
            return f"{self.arch}: features not readable from /proc/cpuinfo"
        if not self.x86:
            return f"{self.arch}: " + ", ".join(
                name if flag in self.flags else f"no {name}" for flag, name in ARM_FEATURES)
        have = [("AVX2", self.has_level("AVX2")), ("AVX-512", self.has_level("AVX512_CORE")),
                ("AVX512-BF16", self.has_level("AVX512_CORE_BF16")),
                ("AMX", self.has_level("AVX512_CORE_AMX"))]
        return ", ".join(name if present else f"no {name}" for name, present in have)

    def describe(self) -> str:
        """One line for summaries: model name, features and the ISA oneDNN runs."""
        if not self.x86:
            return (f"{self.model_name} ({self.vendor}; {self.features()}); our kernels are "
                    "x86-64 only: MindSpore's own CPU layers and the numpy NMS run here")
        capped = f", capped by {ONEDNN_ISA_VARIABLE}={self.cap}" if self.cap else ""
        return (f"{self.model_name} ({self.vendor}; {self.features()}); oneDNN runs "
                f"{self.effective_isa}{capped}")

    def as_dict(self) -> dict:
        """The fields a benchmark's JSON line carries."""
        return {"cpu_model": self.model_name, "cpu_vendor": self.vendor,
                "cpu_features": self.features(), "onednn_isa": self.effective_isa,
                ONEDNN_ISA_VARIABLE: self.cap or "", "cpu_bf16": self.native_bf16}

    def bf16_refusal(self) -> Optional[str]:
        """Why bfloat16 convolutions cannot run here (None when they can)."""
        if self.native_bf16:
            return None
        if not self.x86:
            lacks = f"our kernels are built for x86-64 only, and this is {self.arch}"
        elif any(self.has_level(name) for name in BF16_LEVELS):
            lacks = f"{ONEDNN_ISA_VARIABLE}={self.cap} keeps oneDNN below AVX512_CORE_BF16"
        else:
            lacks = "it has neither AVX512-BF16 nor AMX"
        return (f"conv_dtype bfloat16 needs native bfloat16 arithmetic, and this CPU cannot "
                f"provide it: {self.model_name} ({self.features()}): {lacks}. Use conv_dtype "
                "float32 (the default) on this machine")


def parse_cpuinfo(text: str, cap: Optional[str] = None,
                  machine: Optional[str] = None) -> CpuInfo:
    """A CpuInfo from the text of /proc/cpuinfo (its first processor's entry) for a program
    running as ``machine`` (None: this one's, ``platform.machine()``). Off x86-64, x86 fields
    in the text (an emulator's host) are not taken for the processor's own."""
    arch = (machine or platform.machine() or "unknown").lower()
    fields: dict = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if arch in X86_64:
        flags = fields.get("flags", "")
        model = fields.get("model name") or platform.processor() or "unknown CPU"
        return CpuInfo(vendor=fields.get("vendor_id", "unknown"),
                       model_name=" ".join(model.split()), flags=frozenset(flags.split()),
                       cap=(cap or "").strip().upper() or None, arch=arch)
    if "Features" not in fields and "CPU implementer" not in fields:
        fields = {}   # another architecture's text: an emulator's host
    implementer = fields.get("CPU implementer", "").lower()
    part = fields.get("CPU part", "").lower()
    vendor = ARM_IMPLEMENTERS.get(implementer, implementer or "unknown vendor")
    model = (fields.get("model name") or fields.get("Model")
             or ARM_PARTS.get((implementer, part))
             or (f"{arch} processor (part {part})" if part else f"{arch} processor"))
    if not fields:
        vendor = "not readable: emulated, or /proc/cpuinfo missing"
    return CpuInfo(vendor=vendor, model_name=" ".join(model.split()),
                   flags=frozenset(fields.get("Features", "").split()),
                   cap=(cap or "").strip().upper() or None, arch=arch)


def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's processor, with the oneDNN cap of the environment now."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, os.environ.get(ONEDNN_ISA_VARIABLE))


# How many processes of the job run on this host: the launcher (src.launcher) sets it for each
# process it starts, so that this host's cores are shared among them (Config.workers).
LOCAL_PROCESSES_VARIABLE = "SSD_LOCAL_PROCESSES"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; the machine's count where there is
    none)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
