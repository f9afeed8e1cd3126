"""How a run meets the machine it runs on: its numeric precision and memory layout (which the device and, on a CPU,
its instruction set decide), the machine as a run records it, and the collective backends a multi-GPU run may use.
Shared by the CIFAR-10 and ImageNet runs, the analyses and the study's planner; torch-free."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PRECISIONS = ("auto", "bf16", "fp32", "best")
BACKENDS = ("auto", "nccl", "gloo")  # torch.distributed's, for the ImageNet runs on several GPUs
LAYOUTS = ("auto", "contiguous", "channels_last")
# The layout each precision ran in before the layout was a setting: bf16 channels_last (oneDNN's and cuDNN's bf16
# kernels), fp32 contiguous (every CPU run; no fp32 run has been recorded on CUDA).
HISTORICAL_LAYOUT = {"bf16": "channels_last", "fp32": "contiguous"}


# An fp32 CPU study leaves contiguous, the layout every fp32 run so far has had, only for a clear gain: a choice
# that flipped between two measurements would put a study's runs in two layouts (two identities).
LAYOUT_GAIN = 1.05


def faster_layout(step_seconds: dict[str, float]) -> str:
    """The layout an fp32 CPU study trains in, from each layout's measured step time: channels_last where it is
    at least LAYOUT_GAIN times as fast, else contiguous."""
    return ("channels_last" if step_seconds["contiguous"] >= LAYOUT_GAIN * step_seconds["channels_last"]
            else "contiguous")


def resolve_layout(layout: str, precision: str, device_type: str) -> str:
    """``auto``: channels_last in bf16 and on CUDA, else contiguous (a study on an fp32 CPU passes its
    measured choice instead); a named layout stays."""
    if layout != "auto":
        return layout
    return "channels_last" if precision == "bf16" or device_type == "cuda" else "contiguous"


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto``: bf16 on CUDA (autocast, where tensor cores run it), fp32 on the CPU. ``best``: bf16
    wherever the hardware runs it natively (CUDA; CPUs with AVX512-BF16 or AMX), else fp32."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision == "best":
        return "bf16" if device_type == "cuda" or cpu_has_native_bf16() else "fp32"
    return precision


# oneDNN's ISA names below its first with bf16 dot products (AVX512_CORE_BF16): where ONEDNN_MAX_CPU_ISA caps the
# CPU at one of these, its kernels compute bf16 the slow way, as on a CPU without it (so an AVX512-BF16 machine run
# with ONEDNN_MAX_CPU_ISA=AVX2 stands in for an AVX2-only one, fp32 included; docs/cpu.md).
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_isa_cap() -> str | None:
    """The ISA oneDNN is capped at (``ONEDNN_MAX_CPU_ISA``, or DNNL_MAX_CPU_ISA, its older name), None without one."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap and cap.strip().upper() not in ("", "ALL", "DEFAULT") else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX, read from /proc/cpuinfo) and oneDNN is
    not capped below it; elsewhere bf16 autocast is emulated and slower than fp32, so ``best`` keeps fp32."""
    cpuinfo = Path("/proc/cpuinfo")
    if not sys.platform.startswith("linux") or not cpuinfo.is_file() or onednn_isa_cap() in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    flags = set(cpuinfo.read_text(errors="replace").split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def processor_description() -> str:
    """This CPU as a run records it: its model name and whether it computes bf16 natively (AVX512-BF16,
    AMX), which decides what ``best`` runs and so the numbers (Linux /proc/cpuinfo; elsewhere the platform's
    name)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not sys.platform.startswith("linux") or not cpuinfo.is_file():
        import platform

        return platform.processor() or platform.machine() or "unknown"
    text = cpuinfo.read_text(errors="replace")
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    flags = set(text.split())
    features = [f"{'' if flag in flags else 'no '}{name}" for flag, name in
                (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX"), ("avx2", "AVX2"))]
    cap = f"; oneDNN capped at {onednn_isa_cap()}" if onednn_isa_cap() else ""
    return f"{names[0] if names else 'unknown CPU'} ({', '.join(features)}{cap})"
