"""Where and how numbers are computed: device, precision (chosen by the hardware), autocast, CPU facts.

``precision="auto"`` means *fastest and exact enough*: bf16 autocast on a CUDA device that supports it, and on a CPU
only where the hardware runs bf16 natively (``avx512_bf16`` or ``amx_bf16``; elsewhere PyTorch emulates bf16 and
autocast is about 2.3x slower than fp32). Where the CPU flags cannot be read (not Linux/x86) a sub-second matmul
probe decides, cached per machine. Scores and losses are always built in fp32 (see ``losses.contrastive``); only
the encoders run in the chosen precision.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from .errors import KGDistillError

log = logging.getLogger("kgdistill")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def set_threads(count: int | None) -> None:
    """Use ``count`` CPU threads for torch's own work (``train.num_threads``); None or 0 leaves torch's choice."""
    if count:
        torch.set_num_threads(count)


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is an error naming ``train.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise KGDistillError("config key 'train.device': cuda requested but no CUDA device is available")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model and the flags that decide bf16: ``{"model", "flags": [...], "native_bf16": bool | None}``.

    ``native_bf16`` is None where /proc/cpuinfo has no x86 flags to read (then the probe decides)."""
    model, flags = platform.processor() or "unknown", None
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model in ("unknown", "", platform.machine()):
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = value.split()
    relevant = sorted(f for f in (flags or []) if "bf16" in f or f.startswith("amx") or f == "avx512f")
    native = None if flags is None else any(f in flags for f in NATIVE_BF16_FLAGS)
    return {"model": model, "flags": relevant, "native_bf16": native}


def _probe_cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kgdistill"
    return root / "precision-probe.json"


def probe_cpu_bf16(size: int = 512, repeats: int = 5) -> dict:
    """Time a matmul in fp32 and in bf16 (well under a second); bf16 counts as native if it is >= 1.25x faster."""

    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times)

    fp32, bf16 = best(torch.float32), best(torch.bfloat16)
    return {"fp32_s": fp32, "bf16_s": bf16, "native_bf16": fp32 / bf16 >= 1.25}


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> tuple[bool, str]:
    """Whether bf16 is fast on this CPU, and why we think so (flags, or a probe cached per machine)."""
    info = cpu_info()
    if info["native_bf16"] is not None:
        found = [f for f in NATIVE_BF16_FLAGS if f in info["flags"]]
        return bool(found), (f"cpu flags {', '.join(found)}" if found else
                             f"no {'/'.join(NATIVE_BF16_FLAGS)} in the cpu flags: bf16 would be emulated")
    key = f"{info['model']}|{platform.machine()}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    path = _probe_cache_path()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        cached[key] = probe_cpu_bf16()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cached, indent=1), encoding="utf-8")
        except OSError:
            pass  # the probe is cheap; an unwritable cache only means probing again next time
    probe = cached[key]
    speedup = probe["fp32_s"] / max(probe["bf16_s"], 1e-12)
    return bool(probe["native_bf16"]), f"matmul probe: bf16 {speedup:.2f}x fp32"


@functools.lru_cache(maxsize=None)
def _resolve(precision: str, device_type: str) -> tuple[str, str]:
    """(chosen, why); cached, so the 'auto' choice is made and logged once per device type."""
    if precision in ("bf16", "fp32"):
        return precision, "set explicitly"
    if device_type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        chosen, why = ("bf16" if ok else "fp32"), ("cuda supports bf16" if ok else "cuda device without bf16")
    elif device_type == "cpu":
        native, why = cpu_native_bf16()
        chosen = "bf16" if native else "fp32"
    else:
        chosen, why = "fp32", f"no bf16 policy for device type {device_type}"
    log.info("precision auto -> %s on %s (%s)", chosen, device_type, why)
    return chosen, why


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` or ``fp32`` for this device; explicit values pass through."""
    return _resolve(precision, torch.device(device).type)[0]


def precision_info(precision: str, device: torch.device | str) -> dict:
    """What run.json and bench record: requested, chosen, why, and the CPU (and GPU) facts behind it."""
    device = torch.device(device)
    chosen, why = _resolve(precision, device.type)
    info = {"requested": precision, "chosen": chosen, "reason": why, "device": str(device), "cpu": cpu_info()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def autocast(device: torch.device, precision: str):
    """bf16 autocast when the (resolved) precision is bf16, a no-op context otherwise."""
    use_bf16 = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def fp32_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``queries @ keys.T`` in fp32 whatever autocast is active: near cosine 0.8 bf16 resolves only ~0.004, a few
    quanta of SimKGC's 0.02 margin."""
    with torch.autocast(queries.device.type, enabled=False):
        return queries.float() @ keys.float().T
