"""Shared test setup, and a closing line saying which test tiers ran."""

import os
from collections import Counter

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from tests.comfyui import harness  # noqa: E402

torch.set_num_threads(1)   # tiny convolutions run ~100x slower with 2 threads on small machines


def _tier(nodeid: str) -> str:
    return "comfyui" if nodeid.startswith("tests/comfyui/") else "engine"


def pytest_report_header(config):
    reason = harness.missing_reason()
    if reason:
        return [f"ComfyUI tier: off. {reason}"]
    version_file = os.path.join(harness.comfyui_path(), "comfyui_version.py")
    version = "unknown version"
    if os.path.isfile(version_file):
        with open(version_file, encoding="utf-8") as handle:
            version = handle.read().split("=")[-1].strip().strip('"')
    return [f"ComfyUI tier: on, ComfyUI {version} at {harness.comfyui_path()}"]


def pytest_terminal_summary(terminalreporter):
    counts = {"engine": Counter(), "comfyui": Counter()}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "") or ""
            if nodeid:
                counts[_tier(nodeid)][outcome] += 1
    lines = []
    for tier, counter in counts.items():
        ran = counter["passed"] + counter["failed"] + counter["error"]
        state = "ran" if ran else "did not run"
        detail = ", ".join(f"{n} {k}" for k, n in counter.items() if n) or "no tests collected"
        lines.append(f"{tier} tier {state}: {detail}")
    reason = harness.missing_reason()
    if reason:
        lines.append(reason)
    terminalreporter.write_sep("=", "test tiers")
    for line in lines:
        terminalreporter.write_line(line)
