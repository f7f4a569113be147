"""Manual check in ComfyUI's real frontend (headless Chromium), keeping the screenshots:
    <checkout>/.venv/bin/python scripts/check_in_browser.py /tmp/shots
Writes template.png and live_loss.png there. The same check runs as a slow test
(tests/comfyui/test_frontend.py, `bash scripts/test.sh --all`). Needs COMFYUI_PATH, Debian's chromium and
playwright in the checkout's Python.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.comfyui import frontend_check  # noqa: E402


def main(out_dir: str) -> None:
    reason = frontend_check.missing_reason()
    if reason:
        sys.exit(reason)
    seen = frontend_check.check_in_frontend(out_dir)
    unresolved = frontend_check.unresolved_nodes(seen["nodes"])
    assert "comfyui-lora-trainer.live-loss" in seen["extensions"], seen["extensions"]
    assert not unresolved and seen["status"] == "success", (unresolved, seen["status"])
    print(f"ok: {len(seen['nodes'])} nodes loaded, extension registered, {seen['progress_events']} progress "
          f"events, screenshots in {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "browser-check")
