"""Shared test setup, a closing line per run, and the run's report for scripts/run_tests.py."""

import json
import os
import platform
from collections import Counter

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from tests.comfyui import harness  # noqa: E402

torch.set_num_threads(1)   # tiny convolutions run ~100x slower with 2 threads on small machines

_deselected_slow: list[str] = []


def _tier(nodeid: str) -> str:
    return "comfyui" if nodeid.startswith("tests/comfyui/") else "engine"


def pytest_report_header(config):
    reason = harness.missing_reason()
    if reason:
        return [f"ComfyUI tier: off. {reason}"]
    return [f"ComfyUI tier: on, ComfyUI {harness.comfyui_version()} at {harness.comfyui_path()}"]


def pytest_deselected(items):
    _deselected_slow.extend(item.nodeid for item in items if item.get_closest_marker("slow"))


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_terminal_summary(terminalreporter):
    counts = {"engine": Counter(), "comfyui": Counter()}
    skip_reasons: Counter = Counter()
    slow_ran = []
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "") or ""
            if not nodeid:
                continue
            counts[_tier(nodeid)][outcome] += 1
            if outcome == "skipped":
                skip_reasons[_skip_reason(report)] += 1
            if outcome != "skipped" and "slow" in getattr(report, "keywords", {}) and report.when == "call":
                slow_ran.append(nodeid.split("::")[-1])
    report_path = os.environ.get("LORA_TRAINER_REPORT")
    if report_path:
        _write_report(report_path, counts, skip_reasons, slow_ran)
        return                                   # scripts/run_tests.py prints the summary of all runs
    lines = []
    for tier, counter in counts.items():
        ran = counter["passed"] + counter["failed"] + counter["error"]
        if ran or counter["skipped"]:
            detail = ", ".join(f"{n} {k}" for k, n in counter.items() if n)
            lines.append(f"{tier} tier {'ran' if ran else 'did not run'}: {detail}")
    reason = harness.missing_reason()
    if reason and counts["comfyui"]["skipped"]:
        lines.append(reason)
    terminalreporter.write_sep("=", "test tiers")
    for line in lines:
        terminalreporter.write_line(line)


def _write_report(path: str, counts: dict, skip_reasons: Counter, slow_ran: list[str]) -> None:
    total = sum(counts.values(), Counter())
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"counts": {k: total[k] for k in ("passed", "failed", "error", "skipped")},
                   "skip_reasons": dict(skip_reasons), "deselected_slow": len(_deselected_slow),
                   "slow_ran": ", ".join(slow_ran), "python": f"Python {platform.python_version()}",
                   "torch": torch.__version__}, handle)
