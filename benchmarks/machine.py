"""Machine facts and measuring aids shared by the benchmark scripts.

The scripts run as ``python benchmarks/<name>.py``, so this file, beside them, imports as
``machine``.  Linux only where it reads /proc; elsewhere the meters report nothing.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


class CpuMeter:
    """CPU time that OTHER processes used on this machine while a block ran: busy time from
    /proc/stat minus this process's own CPU time (os.times).  A timing taken while other work
    shares the cores is flagged, since it is then not a clean measurement."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.ok = os.path.exists("/proc/stat")

    def read(self):
        """(busy seconds of all processes, steal seconds, this process's CPU seconds, wall time)."""
        busy = steal = 0.0
        if self.ok:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / self.hz      # user nice system irq softirq
            steal = (v[7] if len(v) > 7 else 0) / self.hz
        t = os.times()
        return busy, steal, t.user + t.system, time.perf_counter()

    @staticmethod
    def others(r0, r1):
        """(other processes' CPU seconds, steal seconds, wall seconds) between two reads."""
        return max(0.0, (r1[0] - r0[0]) - (r1[2] - r0[2])), r1[1] - r0[1], r1[3] - r0[3]

    @staticmethod
    def load(r0, r1):
        """Other processes' CPU use between two reads as a fraction of one core (at most the
        core count); None when the interval is too short (< 0.25 s) for /proc/stat's ticks."""
        other, _, wall = CpuMeter.others(r0, r1)
        return min(other / wall, float(os.cpu_count() or 1)) if wall >= 0.25 else None


def _status(field: str) -> int:
    """A /proc/self/status entry in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """``with PeakMemory(cuda) as m: work()`` -> ``m.peak`` and ``m.growth`` in bytes.

    CUDA: torch.cuda.max_memory_allocated after a reset, growth over memory_allocated before.
    CPU: the kernel's resident-set high-water mark (VmHWM), reset at the start by writing 5 to
    /proc/self/clear_refs, and its growth over the resident set (VmRSS) just before: exact, not
    sampled.  The growth includes whatever the block returns and keeps."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.peak = self.growth = 0

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self._base = _status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _status("VmHWM")
        self.growth = self.peak - self._base
        return False
