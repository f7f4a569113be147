"""The template and the live-loss extension in ComfyUI's real frontend (headless Chromium). Slow."""

from __future__ import annotations

import pytest

from . import frontend_check


@pytest.mark.slow
def test_template_loads_and_the_live_loss_extension_draws(comfy, tmp_path):
    reason = frontend_check.missing_reason()
    if reason:
        pytest.skip(reason)
    seen = frontend_check.check_in_frontend(str(tmp_path))
    assert "comfyui-lora-trainer.live-loss" in seen["extensions"], seen["extensions"]
    assert not frontend_check.unresolved_nodes(seen["nodes"]), seen["nodes"]
    assert len(seen["nodes"]) >= 14
    assert seen["status"] == "success"
    assert seen["progress_events"] >= 10, seen["progress_events"]      # one per step reached the page
    assert (tmp_path / "template.png").stat().st_size > 10_000
