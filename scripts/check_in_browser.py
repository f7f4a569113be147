"""Manual check in ComfyUI's real frontend (headless Chromium): the template loads with every node and
widget resolved, the live-loss extension is registered, and it draws while a tiny training runs.

Needs a ComfyUI checkout (COMFYUI_PATH), Debian's chromium and `pip install playwright` in .venv:
    .venv/bin/python scripts/check_in_browser.py /tmp/shots
Writes template.png and live_loss.png there. Not part of the test suite (roadmap: browser tests).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.comfyui.server import ComfyServer  # noqa: E402
from tests.comfyui.test_workflow_server import training_graph  # noqa: E402
from tests.helpers import make_kohya_folder  # noqa: E402

TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example_workflows",
                        "train_sd15_lora.json")


def main(out_dir: str) -> None:
    from playwright.sync_api import sync_playwright

    os.makedirs(out_dir, exist_ok=True)
    base = tempfile.mkdtemp()
    make_kohya_folder(os.path.join(base, "input", "dogs"), {"3_sks dog": [(64, 64), (96, 64), (64, 64)]})
    server = ComfyServer(base).start()
    try:
        with open(TEMPLATE, encoding="utf-8") as handle:
            workflow = json.load(handle)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            page.goto(server.url, wait_until="networkidle", timeout=120_000)
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
            time.sleep(2)
            page.keyboard.press("Escape")
            nodes = page.evaluate("() => window.app.graph._nodes.map(n => [n.id, n.type, (n.widgets || []).length])")
            unresolved = [n for n in nodes if n[1] != "Note" and n[2] == 0 and n[1] not in
                          ("PreviewImage", "VAEDecode")]
            extensions = page.evaluate("() => window.app.extensions.map(e => e.name)")
            assert "comfyui-lora-trainer.live-loss" in extensions, extensions
            assert not unresolved, unresolved
            page.screenshot(path=os.path.join(out_dir, "template.png"))
            entry = server.wait(server.queue(training_graph("browser_check", epochs=8)))
            assert entry["status"]["status_str"] == "success", entry["status"]
            time.sleep(1.5)
            page.screenshot(path=os.path.join(out_dir, "live_loss.png"))
            browser.close()
        print(f"ok: {len(nodes)} nodes loaded, extension registered, screenshots in {out_dir}")
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "browser-check")
