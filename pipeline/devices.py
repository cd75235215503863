"""The one place that asks which hardware is present: device and matrix-product precision."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """auto picks CUDA when present, else the CPU; asking for cuda without one is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where bf16 GEMM is fast."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 where the hardware runs it natively (CUDA with bf16, or a bf16 CPU), else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def one_torch_thread() -> None:
    """Thread-pool initializer: this thread's torch ops run on one intra-op thread (OpenMP's thread count
    is a per-thread setting, so the caller's own stays as it was)."""
    torch.set_num_threads(1)


def single_threaded(fn, *args, initializer=one_torch_thread):
    """fn(*args) computed in a helper thread set up by `initializer` (default: one intra-op torch thread).
    The results of GEMMs and reductions can depend on the thread count; this makes them not."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, initializer=initializer) as pool:
        return pool.submit(fn, *args).result()


_LIBC = None


def trim_heap() -> None:
    """Return the freed pages of glibc's heaps to the operating system (`malloc_trim`). Tile tasks free
    many blocks of a few MB from several threads' arenas; without this the resident size of a 16-MP
    run grew by ~1.7 GB of free-but-kept memory (measured: finest scale 3.0 GB -> 1.9 GB anonymous with a
    trim after each task). A no-op where glibc is absent."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def release_memory() -> None:
    """Hand freed memory back to the operating system after a big object (an index, a scale's
    reference) is dropped: collect cycles, then trim the heaps (after building an 11M-patch index ~1 GB
    stayed resident until `malloc_trim`)."""
    import gc

    gc.collect()
    trim_heap()


# This process's GPU when it is one of a pool's one-per-GPU workers (`pin_gpu`), else None.
_GPU_SLOT: int | None = None


def gpu_worker_layout(device: torch.device, scheduler: str, workers: int, *, address: str | None = None,
                      count: int | None = None) -> tuple[str, int]:
    """The tile workers for `device`: unchanged on a CPU; on CUDA one worker per GPU. A faiss GPU index is
    not thread-safe and a CUDA context per card keeps each one busy, so with several GPUs each worker is a
    process pinned to its own card (`pin_gpu`), and with one GPU the tiles run one at a time in this
    process. count: the number of GPUs (default: torch's). A remote dask scheduler keeps its layout."""
    if device.type != "cuda" or address:
        return scheduler, workers
    count = torch.cuda.device_count() if count is None else count
    return ("processes", count) if count > 1 else ("threads", 1)


def pin_gpu(counter) -> None:
    """Initializer of a one-per-GPU worker process: take the next slot of the shared `counter` (a
    multiprocessing Value) as this process's GPU."""
    global _GPU_SLOT
    with counter.get_lock():
        _GPU_SLOT = counter.value
        counter.value += 1
    if torch.cuda.is_available():  # pragma: no cover - needs a GPU
        torch.cuda.set_device(_GPU_SLOT % torch.cuda.device_count())


def gpu_slot() -> int | None:
    return _GPU_SLOT


def worker_device(device: torch.device) -> torch.device:
    """The device a tile worker computes on: its own card when it is a pinned GPU worker, else `device`."""
    if device.type != "cuda" or device.index is not None or _GPU_SLOT is None:
        return device
    return torch.device("cuda", _GPU_SLOT % max(1, torch.cuda.device_count()))  # pragma: no cover - needs a GPU
