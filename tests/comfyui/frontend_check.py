"""ComfyUI's real frontend in headless Chromium: the template loads with every node and widget resolved,
the live-loss extension is registered, and a tiny training runs while the page is open.

Used by test_frontend.py (marked slow) and by scripts/check_in_browser.py, which keeps the screenshots.
Needs Debian's chromium (/usr/bin/chromium) and the playwright package in the checkout's Python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time

from tests.helpers import make_kohya_folder

from . import harness
from .server import ComfyServer

CHROMIUM = "/usr/bin/chromium"
TEMPLATE = os.path.join(harness.REPO_ROOT, "example_workflows", "train_sd15_lora.json")
# the closed network here refuses Chromium's background connections; these flags stop it making them
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# the same api object the pack's extension listens on (window.comfyAPI in newer frontends, else the shim)
COUNT_PROGRESS_EVENTS = """async () => {
  const api = window.comfyAPI?.api?.api ?? (await import("/scripts/api.js")).api;
  window.__loraEvents = 0;
  api.addEventListener("lora_trainer.progress", () => { window.__loraEvents += 1; });
}"""


def missing_reason() -> str | None:
    if not os.path.isfile(CHROMIUM) and not shutil.which("chromium"):
        return "no Chromium: `apt-get install chromium` to run the frontend check"
    if importlib.util.find_spec("playwright") is None:
        return "no playwright in this Python: `<checkout>/.venv/bin/python -m pip install playwright`"
    return None


def check_in_frontend(out_dir: str) -> dict:
    """Runs the check; returns what it saw and writes template.png and live_loss.png into out_dir."""
    from playwright.sync_api import sync_playwright

    from .test_workflow_server import training_graph

    os.makedirs(out_dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="lora-trainer-frontend-")
    make_kohya_folder(os.path.join(base, "input", "dogs"), {"3_sks dog": [(64, 64), (96, 64), (64, 64)]})
    server = ComfyServer(base).start()
    try:
        with open(TEMPLATE, encoding="utf-8") as handle:
            workflow = json.load(handle)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM,
                                                 args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            page.goto(server.url, wait_until="networkidle", timeout=120_000)
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
            time.sleep(2)
            page.keyboard.press("Escape")
            nodes = page.evaluate("() => window.app.graph._nodes.map(n => [n.id, n.type, (n.widgets || []).length])")
            extensions = page.evaluate("() => window.app.extensions.map(e => e.name)")
            page.screenshot(path=os.path.join(out_dir, "template.png"))
            page.evaluate(COUNT_PROGRESS_EVENTS)
            entry = server.wait(server.queue(training_graph("frontend_check", epochs=8)))
            time.sleep(1.5)
            progress_events = page.evaluate("() => window.__loraEvents")
            page.screenshot(path=os.path.join(out_dir, "live_loss.png"))
            browser.close()
        return {"nodes": nodes, "extensions": extensions, "status": entry["status"]["status_str"],
                "progress_events": progress_events, "frontend_log": server.read_log()}
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def unresolved_nodes(nodes: list) -> list:
    """Nodes the frontend drew without widgets although they have some: their definition did not load."""
    return [n for n in nodes if n[1] != "Note" and n[2] == 0 and n[1] not in ("PreviewImage", "VAEDecode")]
