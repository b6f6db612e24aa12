"""How many CPU threads the heavy commands use: the cores no other process is using.

torch takes one thread per core by default. Beside another busy process that oversubscribes
the cores, and small models wait on each other's threads: on the 2-core development machine
(2026-12-06, ML-100K, the demo's compact model), with one other single-threaded job running,
2 threads were 2.1x slower than 1 for SASRec's training (18.7 s vs 8.9 s for 3 epochs),
1.8x for 20-beam evaluation (16.8 s vs 9.4 s, 1,000 rows) and 1.2x for SFT (30.7 s vs 25.4 s,
30 steps), while on the quiet machine 2 threads were faster (4.8 vs 7.0 s, 6.1 vs 6.9 s,
15.1 vs 20.9 s). So: the cores this process may run on, less those the other processes
keep busy (measured over 0.2 s from /proc/stat, this process's own time taken out; the
1-minute load average where there is no /proc), at least 1. An explicit OMP_NUM_THREADS
(torchrun sets 1 per rank) is left as it is.
"""
from __future__ import annotations

import os
import time


def free_cores(cores: int, busy_elsewhere: float) -> int:
    """`cores` less the rounded cores other processes keep busy, at least 1."""
    return max(1, min(cores, cores - round(busy_elsewhere)))


def usable_cores() -> set[int]:
    """The CPUs this process may run on (all of them where the OS cannot say: macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def busy_cores_elsewhere(interval: float = 0.2, cores: set[int] | None = None) -> float:
    """Cores of `cores` (default: the usable ones) kept busy by other processes during
    `interval` seconds. Busy CPUs this process may not use (a container's, taskset's) do not
    count; a cgroup CPU quota is not read."""
    cores = usable_cores() if cores is None else cores
    try:
        total, idle, own = _cpu_ticks(cores)
        time.sleep(interval)
        total2, idle2, own2 = _cpu_ticks(cores)
    except (OSError, ValueError):  # no /proc: the load average (which counts this process too, if busy)
        return os.getloadavg()[0]
    ticks = os.sysconf("SC_CLK_TCK") * interval
    busy = ((total2 - total) - (idle2 - idle)) / ticks  # in cores, all processes
    return max(0.0, busy - (own2 - own) / ticks)


def use_free_cores() -> str:
    """Set torch's thread count to the free cores unless OMP_NUM_THREADS says otherwise;
    returns what was chosen and why, for the command's first line."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return f"{_threads(torch.get_num_threads())} (OMP_NUM_THREADS)"
    usable = usable_cores()
    busy = busy_cores_elsewhere(cores=usable)
    threads = free_cores(len(usable), busy)
    torch.set_num_threads(threads)
    return f"{_threads(threads)} ({len(usable)} cores, {busy:.1f} busy with other processes)"


def _threads(n: int) -> str:
    return f"{n} CPU thread" + ("s" if n != 1 else "")


def _cpu_ticks(cores: set[int]) -> tuple[int, int, int]:
    """(the ticks of `cores`, their idle ticks, this process's ticks) since boot."""
    total = idle = 0
    with open("/proc/stat") as f:
        for line in f:  # cpuN user nice system idle iowait irq softirq steal ...
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                fields = [int(x) for x in values]
                total, idle = total + sum(fields[:8]), idle + fields[3] + fields[4]
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return total, idle, int(own[11]) + int(own[12])  # utime + stime
