"""Runs the test tiers and prints one closing summary: the engine tier once, the ComfyUI tier once per checkout.

    python scripts/run_tests.py [--all] [pytest arguments...]

- Engine tier: `tests/engine` with the repository's `.venv` Python, and again with `.venv-oldest` (the oldest
  Python that requires-python claims) where scripts/setup.sh could make it.
- ComfyUI tier: `tests/comfyui` once for every checkout in COMFYUI_PATH (several separated by ':'; unset:
  ~/ComfyUI, plus ~/ComfyUI-new when it exists), each in its own process with the Python that runs that
  checkout: the matching entry of COMFYUI_PYTHON (':'-separated, empty = default), else the checkout's own
  `.venv` (scripts/setup.sh makes one for a ComfyUI that needs another torch), else the repository's `.venv`.
- `--all` also runs the tests marked `slow` (full-size architectures, a browser, ...); without it they are
  deselected, and the summary says so.
- The engine runs and the ComfyUI runs go in two lanes side by side (each run single-threaded, so the two fill
  a 2-core machine; the ComfyUI runs stay one after another, as their servers share the checkout's
  custom_nodes/). Each run's output is printed whole when it ends. `--serial` runs one at a time.
Paths among the pytest arguments (tests/...) pick the tiers they belong to. Exit status: non-zero when any run
failed. The last line is "tests: N passed, N failed, N skipped" over all runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from tests.comfyui import harness  # noqa: E402  (stdlib only: no torch, no ComfyUI)
REPO_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")
OLDEST_VENV_PYTHON = os.path.join(REPO_ROOT, ".venv-oldest", "bin", "python")    # requires-python's floor
SEPARATOR = ":"


@dataclass
class TierRun:
    label: str
    python: str
    paths: list[str]
    comfyui_path: str | None = None
    skip_reason: str | None = None
    report: dict | None = None
    returncode: int = 0


def comfyui_checkouts() -> list[str]:
    configured = os.environ.get("COMFYUI_PATH")
    if configured:
        return [os.path.abspath(os.path.expanduser(p)) for p in configured.split(SEPARATOR) if p.strip()]
    default = [os.path.expanduser("~/ComfyUI")]
    newer = os.path.expanduser("~/ComfyUI-new")
    if os.path.isdir(newer):
        default.append(newer)
    return default


def checkout_python(checkout: str, index: int) -> str:
    chosen = os.environ.get("COMFYUI_PYTHON", "").split(SEPARATOR)
    if index < len(chosen) and chosen[index].strip():
        return os.path.expanduser(chosen[index].strip())
    own = os.path.join(checkout, ".venv", "bin", "python")
    return own if os.path.isfile(own) else REPO_PYTHON


def comfyui_version(checkout: str) -> str:
    version = harness.comfyui_version(checkout)
    try:
        commit = subprocess.run(["git", "-C", checkout, "rev-parse", "--short=8", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version} ({commit})" if commit else version


def claimed_python_floor() -> str:
    """The version in pyproject.toml's `requires-python = ">=X.Y"`."""
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("requires-python"):
                return line.split(">=")[1].split('"')[0]
    return "unknown"


def split_arguments(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(test paths, other pytest arguments): a path is an argument whose first component is tests/."""
    paths, options = [], []
    for argument in arguments:
        head = argument.split("::")[0]
        if head == "tests" or head.startswith("tests" + os.sep) or head.startswith("tests/"):
            paths.append(argument)
        else:
            options.append(argument)
    return paths, options


def tier_paths(requested: list[str], tier_folder: str) -> list[str]:
    if not requested:
        return [tier_folder]
    return [p for p in requested if p.split("::")[0].rstrip("/").startswith(tier_folder)
            or tier_folder.startswith(p.split("::")[0].rstrip("/"))]


def plan_runs(requested_paths: list[str]) -> list[TierRun]:
    runs = []
    engine_paths = tier_paths(requested_paths, "tests/engine")
    if engine_paths:
        runs.append(TierRun("engine tier", REPO_PYTHON, engine_paths))
        oldest = TierRun(f"engine tier on the oldest claimed Python ({claimed_python_floor()})",
                         OLDEST_VENV_PYTHON, engine_paths)
        if not os.path.isfile(OLDEST_VENV_PYTHON):
            oldest.skip_reason = (f"no .venv-oldest; `bash scripts/setup.sh` makes one where Python "
                                  f"{claimed_python_floor()} is installed (or names one in OLDEST_PYTHON)")
        runs.append(oldest)
    comfy_paths = tier_paths(requested_paths, "tests/comfyui")
    if comfy_paths:
        for index, checkout in enumerate(comfyui_checkouts()):
            run = TierRun(f"ComfyUI tier, ComfyUI {comfyui_version(checkout)} at {checkout}",
                          checkout_python(checkout, index), comfy_paths, comfyui_path=checkout)
            if not os.path.isfile(os.path.join(checkout, "comfy", "model_patcher.py")):
                run.label = f"ComfyUI tier at {checkout}"
                run.skip_reason = (f"no ComfyUI checkout at {checkout}. Clone ComfyUI there (or list checkouts in "
                                   "COMFYUI_PATH) and run `bash scripts/setup.sh`; see README.md")
            elif not os.path.isfile(run.python):
                run.skip_reason = f"no Python at {run.python}: run `bash scripts/setup.sh` first"
            runs.append(run)
    return runs


def execute(run: TierRun, options: list[str], run_slow: bool, report_dir: str, number: int,
            printing: threading.Lock) -> None:
    """One run, its output kept in a file and printed whole (under `printing`) when it ends."""
    report_path = os.path.join(report_dir, f"report-{number}.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", LORA_TRAINER_REPORT=report_path)
    if run.comfyui_path:
        env["COMFYUI_PATH"] = run.comfyui_path
    marker = [] if run_slow or any(o == "-m" or o.startswith("-m") for o in options) else ["-m", "not slow"]
    command = [run.python, "-m", "pytest", *run.paths, *marker, *options]
    with printing:
        print(f"##### started: {run.label}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as output:
        run.returncode = subprocess.call(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        output.seek(0)
        with printing:
            print(f"\n##### {run.label} ({time.monotonic() - started:.0f} s)\n##### {' '.join(command)}", flush=True)
            for line in output:
                sys.stdout.write(line)
            sys.stdout.flush()
    if os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as handle:
            run.report = json.load(handle)


def execute_lanes(runs: list[TierRun], options: list[str], run_slow: bool, report_dir: str, serial: bool) -> None:
    """The engine runs in one lane, the ComfyUI runs in another, the lanes side by side unless `serial`."""
    printing = threading.Lock()
    numbered = [(number, run) for number, run in enumerate(runs) if not run.skip_reason]
    lanes = [[item for item in numbered if item[1].comfyui_path is None],
             [item for item in numbered if item[1].comfyui_path is not None]]
    if serial:
        lanes = [numbered]

    stopped = threading.Event()             # Ctrl-C: the runs going on get it too; no lane starts another

    def work(lane) -> None:
        for number, run in lane:
            if stopped.is_set():
                return
            execute(run, options, run_slow, report_dir, number, printing)

    threads = [threading.Thread(target=work, args=(lane,), daemon=True) for lane in lanes if lane]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        stopped.set()
        for thread in threads:
            thread.join()
        raise


def describe(run: TierRun) -> list[str]:
    if run.skip_reason:
        return [f"{run.label}: skipped: {run.skip_reason}"]
    report = run.report
    if report is None:
        return [f"{run.label}: FAILED to run (pytest exit status {run.returncode}, no report written)"]
    counts = report["counts"]
    detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no tests collected"
    state = "FAILED" if counts.get("failed") or counts.get("error") or run.returncode not in (0, 5) else "ok"
    lines = [f"{run.label}: {state}: {detail}  [{report['python']}, torch {report['torch']}]"]
    for reason, count in sorted(report["skip_reasons"].items()):
        lines.append(f"    skipped {count}: {reason}")
    if report["deselected_slow"]:
        lines.append(f"    deselected {report['deselected_slow']} slow test(s): run `bash scripts/test.sh --all`")
    if report["slow_ran"]:
        lines.append(f"    slow tests that ran: {report['slow_ran']}")
    return lines


def main(arguments: list[str]) -> int:
    run_slow = "--all" in arguments
    serial = "--serial" in arguments
    arguments = [a for a in arguments if a not in ("--all", "--serial")]
    requested, options = split_arguments(arguments)
    runs = plan_runs(requested)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lora-trainer-tests-") as report_dir:
        execute_lanes(runs, options, run_slow, report_dir, serial)
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    print("\n" + " test tiers ".center(100, "="))
    failed = False
    for run in runs:
        for line in describe(run):
            print(line)
        if run.skip_reason:
            continue
        if run.report is None or run.returncode not in (0, 5):
            failed = True
        counts = (run.report or {}).get("counts", {})
        totals["passed"] += counts.get("passed", 0)
        totals["failed"] += counts.get("failed", 0) + counts.get("error", 0)
        totals["skipped"] += counts.get("skipped", 0)
    if totals["failed"]:
        failed = True
    print(f"all tiers in {time.monotonic() - started:.0f} s" + (" (one at a time)" if serial else ""))
    print(f"tests: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
