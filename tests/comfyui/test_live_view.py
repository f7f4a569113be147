"""The server's copy of each Train node's chart (nodes/live_view.py): what a page opened mid-run draws."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture
def live_view(pack):
    from comfyui_lora_trainer.nodes import live_view

    return live_view


def step_event(step: int, **extra) -> dict:
    return {"step": step, "total": 100, "loss": 1.0 / step, "average_loss": 2.0 / step, "lr": 1e-4,
            "effective_lr": 3e-4, "epoch": 1, "epochs": 2, **extra}


def test_a_started_run_replaces_the_nodes_chart_and_keeps_each_series(live_view):
    live = live_view.LiveRuns()
    live.record("6", {"started": True, "run": "first", "step": 0, "total": 100})
    for step in (1, 2, 3):
        live.record("6", step_event(step))
    live.record("6", {"step": 3, "validation_loss": 0.5})
    assert live.preview("6", 3, b"first") == {"step": 3, "preview_step": 3, "preview_count": 1}
    assert live.preview("6", 3, b"jpeg")["preview_count"] == 2             # a second prompt at the same step
    assert live.preview("7", 3, b"jpeg") == {}                               # no run on that node: nothing kept
    run = live.snapshot()["6"]
    assert run["run"] == "first" and run["steps"] == [1, 2, 3] and run["losses"] == [1.0, 0.5, 1 / 3]
    assert run["averages"] == [2.0, 1.0, 2 / 3] and run["effective"] == [3e-4] * 3 and run["lrs"] == [1e-4] * 3
    assert run["validation"] == [[3, 0.5]] and run["preview_step"] == 3 and live.preview_bytes("6") == b"jpeg"
    assert live.preview_bytes("7") is None
    first_id = run["run_id"]

    assert live.record("6", {"started": True, "run": "second", "step": 0, "total": 50}) > first_id
    run = live.snapshot()["6"]
    assert run["run"] == "second" and run["steps"] == [] and run["validation"] == [] and "preview_step" not in run
    assert run["preview_count"] == 0
    assert live.preview_bytes("6") is None                                   # the old run's preview is gone


def test_a_resumed_run_starts_with_its_earlier_points(live_view):
    live = live_view.LiveRuns()
    history = {"steps": [1, 2], "losses": [0.9, 0.8], "averages": [0.9, 0.85], "lrs": [1e-4, 1e-4],
               "effective": [1e-4, 1e-4], "validation": [[2, 0.7]]}
    live.record("6", {"started": True, "run": "r", "step": 2, "total": 10, "history": history})
    long_history = {name: list(range(1, 30_001)) for name in live_view.SERIES}
    live.record("8", {"started": True, "run": "long", "step": 30_000, "total": 40_000,
                      "history": {**long_history, "validation": [[step, 1.0] for step in range(1, 30_001)]}})
    kept = live.snapshot()["8"]
    assert len(kept["steps"]) <= live_view.MAX_POINTS and len(kept["validation"]) <= live_view.MAX_POINTS
    assert kept["steps"][0] == 1 and kept["steps"] == sorted(kept["steps"])
    live.record("6", step_event(3))
    run = live.snapshot()["6"]
    assert run["steps"] == [1, 2, 3] and run["losses"][:2] == [0.9, 0.8] and run["validation"] == [[2, 0.7]]


def test_memory_stays_bounded_long_runs_are_thinned_and_old_nodes_forgotten(live_view):
    live = live_view.LiveRuns()
    live.record("6", {"started": True, "run": "long", "step": 0, "total": 10_000})
    for step in range(1, 5001):
        live.record("6", step_event(step))
    steps = live.snapshot()["6"]["steps"]
    assert len(steps) <= live_view.MAX_POINTS and steps[0] == 1 and steps[-1] == 5000
    assert steps == sorted(steps) and len(set(steps)) == len(steps)         # the whole run's shape, in order
    for node in range(live_view.MAX_NODES + 3):
        live.record(str(100 + node), {"started": True, "run": f"n{node}", "step": 0, "total": 1})
    assert len(live.snapshot()) == live_view.MAX_NODES and "6" not in live.snapshot()


def test_readers_and_the_training_thread_do_not_race(live_view):
    live = live_view.LiveRuns()
    live.record("6", {"started": True, "run": "r", "step": 0, "total": 4000})

    def train():
        for step in range(1, 4001):
            live.record("6", step_event(step))

    writer = threading.Thread(target=train)
    writer.start()
    while writer.is_alive():
        run = live.snapshot()["6"]
        assert len({len(run[name]) for name in live_view.SERIES}) == 1      # every series the same length
    writer.join()
