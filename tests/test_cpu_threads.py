"""The heavy commands take the cores no other process is using (rere/cpu_threads.py)."""
from __future__ import annotations

import subprocess
import sys

import torch

from rere import cpu_threads


def test_free_cores_leave_the_busy_ones_and_keep_one():
    assert cpu_threads.free_cores(2, 0.1) == 2
    assert cpu_threads.free_cores(2, 1.2) == 1
    assert cpu_threads.free_cores(2, 3.7) == 1
    assert cpu_threads.free_cores(16, 5.4) == 11


def test_another_busy_process_is_seen_and_this_ones_own_work_is_not():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert cpu_threads.busy_cores_elsewhere(0.5) >= 0.5
    finally:
        busy.kill()
        busy.wait()
    # This process spinning itself is not "elsewhere".
    def spin():
        import time
        end = time.perf_counter() + 0.4
        while time.perf_counter() < end:
            pass
    import threading
    worker = threading.Thread(target=spin)
    worker.start()
    elsewhere = cpu_threads.busy_cores_elsewhere(0.3)
    worker.join()
    assert elsewhere < 0.7


def test_an_explicit_omp_num_threads_wins(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads.use_free_cores() == f"{before} CPU thread{'s' if before != 1 else ''} (OMP_NUM_THREADS)"
    assert torch.get_num_threads() == before
    monkeypatch.delenv("OMP_NUM_THREADS")
    try:
        assert "cores" in cpu_threads.use_free_cores() and 1 <= torch.get_num_threads() <= before
    finally:
        torch.set_num_threads(before)


def test_cores_are_those_this_process_may_use(monkeypatch):
    assert cpu_threads.usable_cores() <= set(range(64 * 1024))
    monkeypatch.delattr(cpu_threads.os, "sched_getaffinity", raising=False)  # macOS
    assert len(cpu_threads.usable_cores()) == (cpu_threads.os.cpu_count() or 1)
    assert cpu_threads.busy_cores_elsewhere(0.05, cores=set()) == 0.0  # no CPU of ours: nothing busy on it
