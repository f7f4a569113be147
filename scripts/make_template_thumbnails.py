"""Draws example_workflows/<name>.jpg for every example_workflows/<name>.json: the picture ComfyUI's template
browser shows for a custom node's template (it loads /api/workflow_templates/<pack folder>/<name>.jpg).

Each workflow is loaded into ComfyUI's real frontend in headless Chromium (a throwaway server with this pack,
tests/comfyui/server.py), fitted to the view with the page's own menus hidden, and saved as a small JPEG.
Run with a ComfyUI checkout's Python that has playwright, after scripts/build_example_workflow.py:

    COMFYUI_PATH=~/ComfyUI-new ~/ComfyUI-new/.venv/bin/python scripts/make_template_thumbnails.py [name ...]

(the shipped ones come from ComfyUI v0.33.0's frontend). It also says where the frontend needs a node larger
than the workflow makes it, or changed a widget value on loading, and then exits non-zero.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from tests.comfyui import frontend_check  # noqa: E402
from tests.comfyui.server import ComfyServer  # noqa: E402

WORKFLOW_DIR = os.path.join(REPO_ROOT, "example_workflows")
VIEWPORT = {"width": 1600, "height": 1200}          # drawn large, then shrunk: readable shapes, small file
THUMBNAIL_SIZE = (400, 300)
JPEG_QUALITY = 82
MAX_BYTES = 60_000
# loaders whose file list the frontend checks: an empty file of each name the workflows pick keeps them from
# being drawn as "missing model"
MODEL_FOLDERS = {"CheckpointLoaderSimple": "checkpoints", "LoraLoader": "loras"}

# the graph canvas and the DOM widgets drawn over it (multiline text) stay; menus, side bars, toasts, the minimap
# and the canvas menu go (run after each load: a workflow brings its own DOM widgets)
HIDE_PAGE_CHROME = """() => {
  const kept = [document.querySelector("#graph-canvas"), ...document.querySelectorAll(".dom-widget")];
  for (const el of document.body.querySelectorAll("*")) {
    if (!kept.some(k => k === el || k.contains(el) || el.contains(k))) el.style.visibility = "hidden";
  }
}"""

# the frontend's own switches for what the canvas draws: no minimap, no stats, no zoom menu, and text at any
# zoom (a whole graph in one view is below the zoom where it would draw nodes as plain boxes)
QUIET_SETTINGS = {"Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False, "Comfy.Graph.CanvasMenu": False,
                  "LiteGraph.Canvas.MinFontSizeForLOD": 0, "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.0}
APPLY_SETTINGS = """async settings => {
  for (const [id, value] of Object.entries(settings)) {
    try { await window.app.extensionManager.setting.set(id, value); } catch (error) { /* not in this frontend */ }
  }
}"""

# scale and offset so every node (with its title bar) fits the view with a margin
FIT_TO_VIEW = """() => {
  const canvas = window.app.canvas, nodes = window.app.graph._nodes;
  const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30, margin = 40;
  const left = Math.min(...nodes.map(n => n.pos[0])) - margin;
  const top = Math.min(...nodes.map(n => n.pos[1] - title)) - margin;
  const right = Math.max(...nodes.map(n => n.pos[0] + n.size[0])) + margin;
  const bottom = Math.max(...nodes.map(n => n.pos[1] + n.size[1])) + margin;
  const { width, height } = canvas.canvas.getBoundingClientRect();
  const scale = Math.min(width / (right - left), height / (bottom - top));
  canvas.ds.scale = scale;
  canvas.ds.offset = [(width / scale - (right - left)) / 2 - left, (height / scale - (bottom - top)) / 2 - top];
  canvas.setDirty(true, true);
  canvas.draw(true, true);
}"""


# nodes whose declared size is smaller than the frontend needs (their widgets would spill onto a neighbour)
CRAMPED_NODES = """() => window.app.graph._nodes.filter(n => n.computeSize).map(n => [n.id, n.type, [...n.size],
  n.computeSize().map(Math.ceil)]).filter(([, , size, needed]) => needed[0] > size[0] + 1 || needed[1] > size[1] + 1)"""

# every node's widget values as the frontend holds them after loading (to compare with the file's)
LOADED_VALUES = """() => Object.fromEntries(window.app.graph.serialize().nodes.map(n =>
  [n.id, n.widgets_values ?? []]))"""


def changed_values(workflow: dict, loaded: dict) -> list[str]:
    """Widget values the frontend did not keep as the file has them (a clamp, a combo it refused, a shift)."""
    changes = []
    for node in workflow["nodes"]:
        kept = loaded.get(str(node["id"]), [])
        for index, value in enumerate(node["widgets_values"]):
            now = kept[index] if index < len(kept) else "(missing)"
            same = (abs(now - value) <= 1e-9 * max(1.0, abs(value)) if isinstance(value, float)
                    and isinstance(now, (int, float)) else now == value)
            if not same:
                changes.append(f"node {node['id']} ({node['type']}) value {index}: {value!r} became {now!r}")
    return changes


def shrink_to_jpeg(png: bytes) -> bytes:
    """The screenshot as a THUMBNAIL_SIZE JPEG under MAX_BYTES (lower quality until it fits)."""
    from PIL import Image, ImageOps

    image = ImageOps.fit(Image.open(io.BytesIO(png)).convert("RGB"), THUMBNAIL_SIZE, Image.LANCZOS)
    for quality in range(JPEG_QUALITY, 30, -8):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality, optimize=True)
        if buffer.tell() <= MAX_BYTES:
            break
    return buffer.getvalue()


def screenshot_workflow(page, workflow: dict) -> tuple[bytes, list[str]]:
    """The fitted graph as PNG bytes, and what the frontend found wrong: nodes that need more room than the
    workflow gives them, values it changed."""
    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
    time.sleep(1.5)                          # the frontend draws its DOM widgets a moment after loading
    page.keyboard.press("Escape")
    problems = [f"node {node_id} ({kind}) is {size}, the frontend needs {needed}: give it more room in "
                "SIZES" for node_id, kind, size, needed in page.evaluate(CRAMPED_NODES)]
    problems += changed_values(workflow, page.evaluate(LOADED_VALUES))
    page.evaluate(HIDE_PAGE_CHROME)
    page.evaluate(FIT_TO_VIEW)
    time.sleep(0.8)                          # DOM widgets follow the new zoom on the next frames
    box = page.locator("#graph-canvas").bounding_box()
    return page.screenshot(clip=box), problems


def install_placeholder_models(base: str, workflows: list[dict]) -> None:
    for workflow in workflows:
        for node in workflow["nodes"]:
            for value in node["widgets_values"] if node["type"] in MODEL_FOLDERS else []:
                if isinstance(value, str) and value.endswith(".safetensors"):
                    path = os.path.join(base, "models", MODEL_FOLDERS[node["type"]], value)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    open(path, "wb").close()


def workflow_paths(names: list[str]) -> list[str]:
    if names:
        return [os.path.join(WORKFLOW_DIR, f"{name}.json") for name in names]
    return sorted(glob.glob(os.path.join(WORKFLOW_DIR, "*.json")))


def write_thumbnails(page, workflows: dict[str, dict]) -> list[str]:
    """Writes <name>.jpg beside each workflow file; returns what the frontend found wrong."""
    problems = []
    for path, workflow in workflows.items():
        png, found = screenshot_workflow(page, workflow)
        problems += [f"{os.path.basename(path)}: {problem}" for problem in found]
        jpeg = shrink_to_jpeg(png)
        target = os.path.splitext(path)[0] + ".jpg"
        with open(target, "wb") as handle:
            handle.write(jpeg)
        print(f"wrote {target} ({len(jpeg) // 1024} KiB)")
    return problems


def main(names: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    reason = frontend_check.missing_reason()
    if reason:
        sys.exit(reason)
    workflows = {}
    for path in workflow_paths(names):
        with open(path, encoding="utf-8") as handle:
            workflows[path] = json.load(handle)
    base = tempfile.mkdtemp(prefix="lora-trainer-thumbnails-")
    install_placeholder_models(base, list(workflows.values()))
    server = ComfyServer(base).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or frontend_check.CHROMIUM,
                                                 args=frontend_check.CHROMIUM_FLAGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(server.url, wait_until="networkidle", timeout=120_000)
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            page.evaluate(APPLY_SETTINGS, QUIET_SETTINGS)
            problems = write_thumbnails(page, workflows)
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    if problems:
        sys.exit("The frontend found these; fix them in scripts/build_example_workflow.py and build again:\n  "
                 + "\n  ".join(problems))


if __name__ == "__main__":
    main(sys.argv[1:])
