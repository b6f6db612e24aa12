"""benchmarks/gpu_checks.py's running, budgeting and report, with stand-in steps (its real
steps need a GPU)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_checks"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_steps_run_in_order_within_the_budget_and_the_report_says_what_happened(tmp_path):
    checks = load()
    figures = {"rows": [{"R": 256, "fused_s": 1.5e-4}]}
    writes = f"import json; json.dump({figures!r}, open({str(tmp_path / 'f.json')!r}, 'w')); print('3 passed')"
    steps = [
        checks.Step("ok", "writes figures", [sys.executable, "-c", writes], 1, "f.json"),
        checks.Step("bad", "fails", [sys.executable, "-c", "raise SystemExit(3)"], 1),
        checks.Step("slow", "runs past the budget", [sys.executable, "-c", "import time; time.sleep(60)"], 1),
        checks.Step("late", "cannot fit any more", [sys.executable, "-c", "pass"], 1_000),
    ]
    total = checks.run_all(steps, tmp_path, budget=8)
    assert total < 30
    assert [s.status.split(":")[0].split(" (")[0] for s in steps] == ["passed", "failed", "stopped at the budget",
                                                                       "skipped"]
    assert steps[0].figures == figures and steps[1].exit_code == 3
    report = checks.markdown("Stand-in GPU", steps, total)
    assert "| ok | writes figures | passed |" in report and "ok: `3 passed`" in report
    assert "| 256 | 0.00015 |" in report
    json.dumps([vars(s) for s in steps])  # what main writes to gpu_checks.json


def test_every_script_a_step_runs_exists_and_takes_its_flags():
    checks = load()
    for step in checks.steps(Path("OUT"), Path("CACHE")):
        command = step.command[1:]
        if command[0].endswith(".py"):
            text = (SCRIPT.parents[1] / command[0]).read_text()
            for flag in (a for a in command if a.startswith("--")):
                assert f'"{flag}"' in text, (step.name, flag)
        for path in (a for a in command if a.startswith("tests/")):
            assert (SCRIPT.parents[1] / path).exists(), path
