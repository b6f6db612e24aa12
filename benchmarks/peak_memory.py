"""Peak extra resident memory of one call, measured in a fresh child process (CPU).

tracemalloc does not see torch's allocations and torch has no CPU peak counter. The child
builds its inputs, resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`),
runs the call and reads the peak (`VmHWM` in /proc/self/status): peak minus the RSS before
the call is the extra memory it needed, in MB. The child runs with MALLOC_MMAP_THRESHOLD_ =
1 MB, so every allocation above 1 MB is mmapped and returned on free and the figure tracks
live tensor memory (an upper bound: small allocations may stay resident).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys


def measure_in_child(script: str, *args: str) -> float:
    """Run `python script --measure *args`; the child prints `report(...)`'s line last."""
    # A fixed 1 MB mmap threshold: glibc's dynamic one rises to 32 MB after the first large
    # free, after which freed temporaries stay resident and RSS overstates live memory.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    result = subprocess.run([sys.executable, script, "--measure", *args], capture_output=True, text=True,
                            check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_extra_mb"]


def peak_extra_mb(call) -> float:
    """Run `call()` in this (child) process and return its peak extra RSS in MB."""
    try:  # reset the peak (VmHWM) to the current RSS: setup's own transients must not count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
    except OSError:  # no /proc (not Linux): fall back to the lifetime peak
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    call()
    try:
        after = _status_kb("VmHWM")
    except OSError:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return (after - before) / 1024


def report(mb: float) -> None:
    print(json.dumps({"peak_extra_mb": mb}))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
