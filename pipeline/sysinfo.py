"""What sidpipe sees on this machine: versions, CPU features, the precision `auto` picks, threads, GPUs,
memory and free disk. `sidpipe info` prints it; users paste it into bug reports and run it on a cluster
node before a long job. Nothing here changes what a run computes."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

# CPU flags (as /proc/cpuinfo spells them) that decide the matrix-product precision, and a few that
# explain the speed of the fp32 path.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpuinfo() -> tuple[str, set[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (Linux); the platform's guess elsewhere."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def _meminfo() -> dict[str, int]:
    """Total and available memory in bytes (Linux /proc/meminfo); empty where it cannot be read."""
    out = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return {"total": out.get("MemTotal", 0), "available": out.get("MemAvailable", 0)}


def _free(path: Path) -> dict[str, Any]:
    try:
        return {"path": str(path), "free": shutil.disk_usage(path).free}
    except OSError as exc:
        return {"path": str(path), "free": None, "error": exc.strerror or str(exc)}


def _gpus() -> dict[str, Any]:
    import torch

    torch_gpus = []
    if torch.cuda.is_available():  # pragma: no cover - no GPU on the CI machines
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            torch_gpus.append({"name": props.name, "memory": props.total_memory,
                               "bf16": torch.cuda.is_bf16_supported()})
    try:
        import faiss

        faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        faiss_gpus = None
    return {"torch": torch_gpus, "faiss": faiss_gpus}


def precision_reason(precision: str, flags: set[str], device: str) -> str:
    """Why `precision: auto` resolved to `precision` here (devices.resolve_precision makes the choice)."""
    if device == "cuda":  # pragma: no cover - no GPU on the CI machines
        return "a CUDA GPU with bf16 is present" if precision == "bf16" else "the CUDA GPU has no bf16"
    if precision == "bf16":
        return f"the CPU has native bf16 ({', '.join(sorted(flags & {'avx512_bf16', 'amx_bf16'}))})"
    return "the CPU has no native bf16 (AVX512-BF16 or AMX): bf16 would be emulated and slower than fp32"


def collect(workdir: Path | None = None) -> dict[str, Any]:
    """Everything `sidpipe info` reports, as plain JSON-able data."""
    import torch

    from . import __version__
    from .devices import resolve_device, resolve_precision

    model, flags = _cpuinfo()
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    why = precision_reason(precision, flags, device.type)
    try:
        import pyvips

        vips = f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    except Exception:  # noqa: BLE001 - pyvips raises its own errors when libvips is missing
        vips = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    disks = [_free(Path(tempfile.gettempdir()))]
    if workdir is not None:
        disks.append(_free(workdir))
    return {
        "versions": {
            "sidpipe": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "faiss": _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss-gpu-cu12"),
            "zarr": _version("zarr"),
            "dask": _version("dask"),
            "distributed": _version("distributed"),
            "numpy": _version("numpy"),
            "tifffile": _version("tifffile"),
            "pyvips": _version("pyvips"),
            "libvips": vips,
        },
        "platform": {"system": platform.system(), "machine": platform.machine(), "executable": sys.executable},
        "cpu": {
            "model": model,
            "features": {name: name in flags for name in CPU_FEATURES},
            "logical_cpus": os.cpu_count(),
            "usable_cpus": affinity,
        },
        "compute": {
            "device": device.type,
            "precision_auto": precision,
            "precision_reason": why,
            "torch_threads": torch.get_num_threads(),
        },
        "gpus": _gpus(),
        "memory": _meminfo(),
        "disk": disks,
    }


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 2**30:.1f} GiB"


def format_text(info: dict[str, Any]) -> str:
    """The report as aligned plain text."""
    v, cpu, comp, gpus, mem = info["versions"], info["cpu"], info["compute"], info["gpus"], info["memory"]
    lines = ["versions:"]
    lines += [f"  {name:<12} {value or 'not installed'}" for name, value in v.items()]
    lines.append(f"platform:      {info['platform']['system']} {info['platform']['machine']} "
                 f"({info['platform']['executable']})")
    lines.append(f"cpu:           {cpu['model']}, {cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical CPUs")
    present = [k for k, on in cpu["features"].items() if on]
    lines.append(f"cpu features:  {', '.join(present) or 'none of ' + ', '.join(cpu['features'])}")
    lines.append(f"device:        {comp['device']} (auto)")
    lines.append(f"precision:     auto -> {comp['precision_auto']}: {comp['precision_reason']}")
    lines.append(f"threads:       torch and faiss use {comp['torch_threads']}")
    torch_gpus = ", ".join(f"{g['name']} ({_size(g['memory'])})" for g in gpus["torch"]) or "none"
    faiss_gpus = "faiss not installed" if gpus["faiss"] is None else str(gpus["faiss"])
    lines.append(f"gpus:          torch: {torch_gpus}; faiss: {faiss_gpus}")
    lines.append(f"memory:        {_size(mem['total'])} total, {_size(mem['available'])} available")
    for d in info["disk"]:
        free = _size(d["free"]) if d["free"] is not None else f"unreadable ({d.get('error')})"
        lines.append(f"disk:          {d['path']}: {free} free")
    return "\n".join(lines)
