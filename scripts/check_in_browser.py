"""The browser check by hand, keeping the screenshots (ComfyUI's real frontend in headless Chromium):
    COMFYUI_PATH=~/ComfyUI-new ~/ComfyUI-new/.venv/bin/python scripts/check_in_browser.py /tmp/shots [--vue] [--readme]
Writes template.png, live_loss.png, after_reload.png and train_node.png there; --vue uses the frontend's
"Nodes 2.0" rendering; --readme also writes docs/train-node.png, the README's picture of the Train node
mid-run. The same check runs as a test (tests/comfyui/test_frontend.py). Needs Debian's chromium and
playwright in the checkout's Python.
"""

from __future__ import annotations

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from tests.comfyui import frontend_check  # noqa: E402

README_PICTURE = os.path.join(REPO_ROOT, "docs", "train-node.png")


def write_readme_picture(screenshot: str) -> None:
    """The screenshot as a small palette PNG (a product asset in the repository, so kept small)."""
    from PIL import Image

    with Image.open(screenshot) as image:
        image.convert("RGB").quantize(colors=256).save(README_PICTURE, optimize=True)
    print(f"wrote {README_PICTURE} ({os.path.getsize(README_PICTURE) // 1024} KiB)")


def main(arguments: list[str]) -> None:
    reason = frontend_check.missing_reason()
    if reason:
        sys.exit(reason)
    out_dir = next((a for a in arguments if not a.startswith("--")), "browser-check")
    seen = frontend_check.check_in_frontend(out_dir, vue_nodes="--vue" in arguments)
    unresolved = frontend_check.unresolved_nodes(seen["nodes"])
    assert "comfyui-lora-trainer.live-loss" in seen["extensions"], seen["extensions"]
    assert not unresolved and not seen["template_mismatches"], (unresolved, seen["template_mismatches"])
    print(f"ok: {len(seen['nodes'])} nodes loaded; chart points while running {seen['points_while_running']}; "
          f"reload {seen['reload']}; {seen['final']['points']} points when cancelled; a second run "
          f"{seen['second_run']['status']} with {seen['second_run']['points']}; screenshots in {out_dir}")
    if "--readme" in arguments:
        write_readme_picture(os.path.join(out_dir, "train_node.png"))


if __name__ == "__main__":
    main(sys.argv[1:])
