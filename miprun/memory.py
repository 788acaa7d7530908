"""Measuring memory: resident set size, peak increase over a stretch of code, returning freed memory.

Used by ``miprun compare`` (each method's peak) and by the benchmarks.
"""

from __future__ import annotations

import os
import threading
from typing import Any


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except Exception:  # psutil missing or unsupported platform
            return None


def physical_bytes() -> int | None:
    """The machine's physical memory in bytes (None where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand memory freed by the previous method back to the OS (glibc), so RSS peaks mean something.

    No ``gc.collect()``: the deep copies hold no reference cycles and are freed by reference
    counting, and a full collection costs about a second in a process that imported lm-eval."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager measuring the peak memory increase over its level when opened.

    On CUDA the peak comes from ``torch.cuda.max_memory_allocated``; on the CPU a background thread
    samples the resident set size every ``interval`` seconds (approximate: the allocator may reuse
    memory freed before the measurement started).
    """

    def __init__(self, device: Any = None, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0
        self._peak = 0

    def _cuda(self) -> bool:
        return self.device is not None and getattr(self.device, "type", str(self.device)) == "cuda"

    def __enter__(self) -> "PeakMemory":
        if self._cuda():
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        start = rss_bytes()
        if start is None:
            return self
        self._start = self._peak = start

        def sample() -> None:
            while not self._stop.wait(self.interval):
                now = rss_bytes() or 0
                self._peak = max(self._peak, now)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda():
            import torch

            torch.cuda.synchronize(self.device)
            self.peak_mb = round((torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20, 1)
            return
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, rss_bytes() or 0)
        self.peak_mb = round((self._peak - self._start) / 2**20, 1)


def return_large_frees(threshold: int = 2 * 2**20) -> bool:
    """Make freed tensors leave the resident set at once (glibc): allocations of ``threshold``
    bytes or more get their own memory maps, and free heap beyond 1 MiB is handed back.

    Without it glibc raises its map threshold after the first large free (up to 32 MiB) and keeps
    later freed tensors — streams, blocks read and dropped — in its heap: on SmolLM2 the layer-wise
    run's peak is 150 MB higher that way (benchmarks/memory.py). The setting is process-wide and
    costs some speed (fresh maps are zeroed), so only layer-wise execution asks for it. Returns
    whether it was applied (False where the C library is not glibc).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, int(threshold))) and bool(libc.mallopt(m_trim_threshold, 2**20))
    except (OSError, AttributeError):
        return False
