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


def busy_cores_elsewhere(interval: float = 0.2) -> float:
    """Cores kept busy by other processes during `interval` seconds."""
    try:
        total, idle, own = _cpu_ticks()
        time.sleep(interval)
        total2, idle2, own2 = _cpu_ticks()
    except OSError:  # no /proc: the load average (which counts this process too, if busy)
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
    cores = len(os.sched_getaffinity(0))
    busy = busy_cores_elsewhere()
    threads = free_cores(cores, busy)
    torch.set_num_threads(threads)
    return f"{_threads(threads)} ({cores} cores, {busy:.1f} busy with other processes)"


def _threads(n: int) -> str:
    return f"{n} CPU thread" + ("s" if n != 1 else "")


def _cpu_ticks() -> tuple[int, int, int]:
    """(all CPUs' ticks, their idle ticks, this process's ticks) since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    # /proc/stat: user nice system idle iowait irq softirq steal ...; /proc/self/stat: utime, stime
    return sum(fields[:8]), fields[3] + fields[4], int(own[11]) + int(own[12])
