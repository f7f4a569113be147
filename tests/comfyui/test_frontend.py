"""The pack's views in ComfyUI's real frontend (headless Chromium, Debian's chromium package, no download), on a
real server training tiny models: the Train node's chart gets points while the run goes on, the in-training
preview appears, the dataset and bucket summaries show, and a reload mid-run draws the run so far again.

Both rendering modes of the frontend: the classic canvas, and "Nodes 2.0" (Vue nodes) where the frontend
draws a pack's DOM widgets in it (frontend 1.49, ComfyUI v0.33; in 1.27's early experimental Vue nodes the
pack's views never appeared, so that case skips there).
Screenshots are kept in test-artifacts/frontend/<ComfyUI version>-<mode>/ (git-ignored).
"""

from __future__ import annotations

import importlib.metadata
import os

import pytest

from . import frontend_check, harness

ARTIFACTS = os.path.join(harness.REPO_ROOT, "test-artifacts", "frontend")
VUE_NODES_DRAW_DOM_WIDGETS = (1, 49)


def frontend_version() -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in importlib.metadata.version("comfyui_frontend_package").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


@pytest.mark.parametrize("mode", ["classic", "nodes 2.0"])
def test_train_node_draws_the_run_live_and_after_a_reload(comfy, mode):
    reason = frontend_check.missing_reason()
    if reason:
        pytest.skip(reason)
    if mode == "nodes 2.0" and frontend_version() < VUE_NODES_DRAW_DOM_WIDGETS:
        pytest.skip(f"frontend {'.'.join(map(str, frontend_version()))}: its early Nodes 2.0 (Vue nodes) never shows "
                    "the pack's views; 1.49 (ComfyUI v0.33) does, and is tested there")
    out_dir = os.path.join(ARTIFACTS, f"{harness.comfyui_version()}-{mode.replace(' ', '')}")
    seen = frontend_check.check_in_frontend(out_dir, vue_nodes=mode == "nodes 2.0")

    assert "comfyui-lora-trainer.live-loss" in seen["extensions"], seen["extensions"]
    assert not frontend_check.unresolved_nodes(seen["nodes"]), seen["nodes"]
    assert not seen["template_mismatches"], seen["template_mismatches"]   # the frontend queues what the tests do
    first, later = seen["points_while_running"]
    assert 3 <= first < later, seen["points_while_running"]            # points kept coming while it trained
    buckets, dataset = seen["summaries"]["LoRABucketCacheLatents"], seen["summaries"]["LoRALoadDatasetFolder"]
    assert buckets["buckets"] == 1 and "1 bucket(s)" in buckets["text"], seen["summaries"]
    assert "3 image(s)" in dataset["text"], seen["summaries"]
    reload = seen["reload"]
    assert reload["still_running"], reload                               # the reload happened mid-run
    assert reload["points_restored"] >= reload["points_before"] > 0, reload

    final, route = seen["final"], seen["live_route"]
    assert "execution_interrupted" in seen["status_messages"], seen["status_messages"]
    assert final["points"] == final["step"] == len(route["steps"]) >= 6 * frontend_check.EVERY, (final, route["steps"])
    assert "val " in final["caption"] and "eff " in final["caption"], final["caption"]
    assert route["validation"] and route["preview_count"] >= 6, route.keys()

    second = seen["second_run"]                                          # a new run clears the chart
    assert second["status"] == "success" and second["points"] == frontend_check.SHORT_RUN_STEPS, second
    assert not second["preview_loaded"] and "_2" in second["caption"], second
    for name in ("template.png", "live_loss.png", "train_node.png", "after_reload.png"):
        assert os.path.getsize(os.path.join(out_dir, name)) > 5_000, name
