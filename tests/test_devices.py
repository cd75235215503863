"""Device selection: one tile worker per GPU (the layout logic runs here without a GPU; the CUDA test
runs only where one is present)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from sidpipe.devices import gpu_slot, gpu_worker_layout, pin_gpu, worker_device


def test_cpu_layout_is_unchanged():
    cpu = torch.device("cpu")
    assert gpu_worker_layout(cpu, "threads", 2) == ("threads", 2)
    assert gpu_worker_layout(cpu, "processes", 3) == ("processes", 3)
    assert worker_device(cpu) == cpu


def test_one_worker_per_gpu():
    cuda = torch.device("cuda")
    # several cards: one process each, whatever --workers or the core count asked for
    assert gpu_worker_layout(cuda, "threads", 32, count=4) == ("processes", 4)
    # one card: one tile at a time in this process (a faiss GPU index is not thread-safe)
    assert gpu_worker_layout(cuda, "threads", 32, count=1) == ("threads", 1)
    # a remote dask scheduler keeps its own workers
    assert gpu_worker_layout(cuda, "distributed", 8, address="tcp://h:8786", count=4) == ("distributed", 8)


def test_pool_processes_take_distinct_gpu_slots():
    """Each process of a one-per-GPU pool is pinned to its own slot (0..n-1), set by the initializer."""
    ctx = multiprocessing.get_context("spawn")
    n = 2
    barrier = ctx.Manager().Barrier(n)
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=pin_gpu, initargs=(ctx.Value("i", 0),)) as pool:
        # a barrier in each task keeps both processes busy at once, so each task runs in its own process
        slots = list(pool.map(_wait_then_slot, [barrier] * n))
    assert sorted(slots) == list(range(n))
    assert gpu_slot() is None  # the parent is not a pinned worker


def _wait_then_slot(barrier) -> int | None:
    barrier.wait(timeout=60)
    return gpu_slot()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_worker_uses_its_card():  # pragma: no cover - needs a GPU
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=pin_gpu, initargs=(ctx.Value("i", 0),)) as pool:
        dev = pool.submit(_device_of_worker).result()
    assert dev == "cuda:0"


def _device_of_worker() -> str:
    return str(worker_device(torch.device("cuda")))
