"""ComfyUI's real frontend in headless Chromium, on a real server with this pack and tiny models: the template
loads with every node and widget resolved, a training runs while the page is open, and the pack's views show
it: the Train node's chart gets points while the run goes on, the in-training preview appears, the dataset and
bucket summaries show, and a reload mid-run draws the run so far again (from GET /lora_trainer/live).

Used by test_frontend.py and by scripts/check_in_browser.py, which keeps the screenshots. Needs Debian's
chromium (/usr/bin/chromium) and the playwright package in the checkout's Python; nothing is downloaded.
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
VUE_NODES_SETTING = "Comfy.VueNodes.Enabled"

# the same api object the pack's extension listens on (window.comfyAPI in newer frontends, else the shim)
COUNT_PROGRESS_EVENTS = """async () => {
  const api = window.comfyAPI?.api?.api ?? (await import("/scripts/api.js")).api;
  window.__loraEvents = 0;
  api.addEventListener("lora_trainer.progress", () => { window.__loraEvents += 1; });
}"""

# the page's websocket client id: a prompt queued under it gets its "executed" messages, as one queued from the page
CLIENT_ID = """async () => (window.comfyAPI?.api?.api ?? (await import("/scripts/api.js")).api).clientId"""

# what the pack's views show now (their elements' data attributes, set by web/lora_trainer.js)
READ_VIEWS = """() => {
  const live = document.querySelector(".lora-trainer-live");
  const preview = document.querySelector(".lora-trainer-preview");
  const summaries = [...document.querySelectorAll(".lora-trainer-summary")];
  return {
    points: Number(live?.dataset.points ?? -1), step: Number(live?.dataset.step ?? -1),
    restored_points: Number(live?.dataset.restoredPoints ?? -1),
    caption: live?.innerText ?? "",
    preview_loaded: Boolean(preview && preview.style.display !== "none" && preview.complete && preview.naturalWidth),
    summaries: Object.fromEntries(summaries.map((s) => [s.dataset.nodeType,
      { text: (s.dataset.shown ? s.querySelector("pre")?.textContent : "") ?? "",
        buckets: Number(s.dataset.buckets ?? 0) }])),
  };
}"""

# scroll the canvas so the bottom of the Train node (its chart and preview) is in view, at scale 1
SHOW_TRAIN_CHART = """(id) => {
  const node = window.app.graph.getNodeById(Number(id));
  const ds = window.app.canvas.ds;
  ds.scale = 1;
  ds.offset[0] = 420 - node.pos[0];
  ds.offset[1] = 980 - (node.pos[1] + node.size[1]);
  window.app.canvas.setDirty(true, true);
}"""


def missing_reason() -> str | None:
    if not os.path.isfile(CHROMIUM) and not shutil.which("chromium"):
        return "no Chromium: `apt-get install chromium` to run the frontend check"
    if importlib.util.find_spec("playwright") is None:
        return "no playwright in this Python: `<checkout>/.venv/bin/python -m pip install playwright`"
    return None


RUN_STEPS = 5000          # longer than the checks need: the test ends the run with Cancel once it has seen enough
EVERY = 30                # previews and validation losses every EVERY steps
SHORT_RUN_STEPS = 12      # the second run, which must start a new chart


def live_graph(output_name: str) -> dict:
    """The tests' tiny training graph with previews and validation losses every few steps."""
    from .test_workflow_server import training_graph

    graph = training_graph(output_name, epochs=0)
    graph["6"]["inputs"].update(max_steps=RUN_STEPS, vae=["1", 2], sample_every_n_steps=EVERY,
                                sample_prompts="a photo of sks dog --w 64 --h 64 --s 2 --d 1",
                                validation_split=0.34, validate_every_n_steps=EVERY, validate_every_n_epochs=0)
    # an adaptive optimizer, so the chart has an effective lr beside the scheduled one
    graph["5"]["inputs"].update(optimizer_type="DAdaptation", learning_rate=1.0, lr_scheduler="constant",
                                lr_warmup=0.0)
    return graph


def with_ids_of(graph: dict, workflow: dict) -> dict:
    """The graph with each of the pack's nodes under the id its type has in the workflow on the page (so the
    page's views get its events and outputs); every other node under a fresh id."""
    template_ids = {node["type"]: str(node["id"]) for node in workflow["nodes"]}
    fresh = iter(range(10_000, 20_000))
    renamed = {old: template_ids[node["class_type"]] if node["class_type"].startswith("LoRA")
               and node["class_type"] in template_ids else str(next(fresh)) for old, node in graph.items()}

    def relinked(value):
        return [renamed[value[0]], value[1]] if isinstance(value, list) and len(value) == 2 and value[0] in renamed \
            else value

    return {renamed[old]: {**node, "inputs": {name: relinked(value) for name, value in node["inputs"].items()}}
            for old, node in graph.items()}


def write_frontend_settings(base: str, settings: dict) -> None:
    """The frontend's settings for the default user, before the server starts (as the settings dialog saves)."""
    folder = os.path.join(base, "user", "default")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "comfy.settings.json"), "w", encoding="utf-8") as handle:
        json.dump(settings, handle)


def wait_for(page, predicate, timeout: float, what: str) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen = page.evaluate(READ_VIEWS)
        if predicate(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; the views show {page.evaluate(READ_VIEWS)}")


def open_page(page, url: str) -> None:
    page.goto(url, wait_until="networkidle", timeout=120_000)
    page.wait_for_function("window.app && window.app.graph", timeout=120_000)


# the frontend's own prompt for the loaded graph (what Queue would send)
FRONTEND_PROMPT = """async () => (await window.app.graphToPrompt()).output"""


def template_prompt_mismatches(page, info: dict) -> list[str]:
    """Each template loaded in the page and turned into a prompt by the frontend itself, against the prompt the
    template tests queue (workflow_to_prompt): a widget list out of order shows up here."""
    from .test_example_workflows import WORKFLOWS, load_workflow, workflow_to_prompt

    mismatches = []
    for name in WORKFLOWS:
        workflow = load_workflow(name)
        page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
        ours, theirs = workflow_to_prompt(workflow, info), page.evaluate(FRONTEND_PROMPT)
        for node_id in sorted(set(ours) | set(theirs)):
            mine, frontend = ours.get(node_id), theirs.get(node_id)
            if mine is None or frontend is None or mine["class_type"] != frontend["class_type"]:
                mismatches.append(f"{name}: node {node_id} is {mine and mine['class_type']} here, "
                                  f"{frontend and frontend['class_type']} in the frontend")
                continue
            for key in sorted(set(mine["inputs"]) | set(frontend["inputs"])):
                if mine["inputs"].get(key) != frontend["inputs"].get(key):
                    mismatches.append(f"{name}: node {node_id} {key} = {mine['inputs'].get(key)!r} here, "
                                      f"{frontend['inputs'].get(key)!r} in the frontend")
    return mismatches


def check_in_frontend(out_dir: str, vue_nodes: bool = False) -> dict:
    """Runs the check; returns what it saw and writes template.png, live_loss.png, after_reload.png and
    train_node.png (the Train node's chart and preview, mid-run) into out_dir."""
    from playwright.sync_api import sync_playwright

    os.makedirs(out_dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="lora-trainer-frontend-")
    make_kohya_folder(os.path.join(base, "input", "dogs"), {"3_sks dog": [(64, 64), (96, 64), (64, 64)]})
    write_frontend_settings(base, {VUE_NODES_SETTING: vue_nodes, "Comfy.TutorialCompleted": True})
    server = ComfyServer(base).start()
    seen: dict = {"vue_nodes": vue_nodes}
    try:
        with open(TEMPLATE, encoding="utf-8") as handle:
            workflow = json.load(handle)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM,
                                                 args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            page.set_default_timeout(120_000)        # a page drawing a training run on a busy 2-core machine
            open_page(page, server.url)
            page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
            time.sleep(2)
            page.keyboard.press("Escape")
            seen["nodes"] = page.evaluate(
                "() => window.app.graph._nodes.map(n => [n.id, n.type, (n.widgets || []).length])")
            seen["extensions"] = page.evaluate("() => window.app.extensions.map(e => e.name)")
            train_node = next(str(node["id"]) for node in workflow["nodes"] if node["type"] == "LoRATrain")
            # the chart is drawn on the Train node whose output_name names the run: queue under the template's
            output_name = page.evaluate(f"""() => window.app.graph.getNodeById({train_node})
                .widgets.find(w => w.name === "output_name").value""")
            page.screenshot(path=os.path.join(out_dir, "template.png"))
            page.evaluate(SHOW_TRAIN_CHART, train_node)
            page.evaluate(COUNT_PROGRESS_EVENTS)
            server.client_id = page.evaluate(CLIENT_ID)
            prompt_id = server.queue(with_ids_of(live_graph(output_name), workflow))

            # while it trains: points arrive, then more; the dataset and bucket summaries show
            first = wait_for(page, lambda s: s["points"] >= 3, 120, "the first chart points")
            later = wait_for(page, lambda s: s["points"] > first["points"] + 5, 60, "more chart points")
            seen["points_while_running"] = (first["points"], later["points"])
            summarised = wait_for(page, lambda s: all(v["text"] for v in s["summaries"].values()), 30,
                                  "the dataset and bucket summaries")
            seen["summaries"] = summarised["summaries"]

            # a reload mid-run: the chart comes back with the run so far, before the next events could fill it
            before_reload = page.evaluate(READ_VIEWS)
            page.reload()
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            page.wait_for_function(f"window.app.graph.getNodeById({train_node})", timeout=60_000)
            page.evaluate(SHOW_TRAIN_CHART, train_node)
            after = wait_for(page, lambda s: s["restored_points"] >= 0, 60, "the run so far from the server")
            seen["reload"] = {"points_before": before_reload["points"], "points_restored": after["restored_points"],
                              "still_running": server.get(f"/history/{prompt_id}").get(prompt_id) is None}
            page.screenshot(path=os.path.join(out_dir, "after_reload.png"))

            # then the in-training preview, and the chart well under way (the README's picture)
            wait_for(page, lambda s: s["preview_loaded"], 120, "the in-training preview")
            wait_for(page, lambda s: s["points"] >= 6 * EVERY, 120, "the run to get under way")
            page.evaluate(SHOW_TRAIN_CHART, train_node)
            time.sleep(0.3)
            page.screenshot(path=os.path.join(out_dir, "live_loss.png"))
            box = page.evaluate("""() => {
              const r = document.querySelector(".lora-trainer-live")?.getBoundingClientRect();
              return r && r.width ? { x: r.x, y: r.y, width: r.width, height: r.height } : null;
            }""")
            if box:
                page.screenshot(path=os.path.join(out_dir, "train_node.png"),
                                clip={"x": max(0, box["x"] - 12), "y": max(0, box["y"] - 10),
                                      "width": box["width"] + 24, "height": box["height"] + 20})
            # Cancel ends the run; the chart says so and holds what the server holds
            server.post("/interrupt")
            entry = server.wait(prompt_id)
            seen["final"] = wait_for(page, lambda s: "cancelled" in s["caption"], 60, "the cancelled run's caption")
            seen["status_messages"] = [kind for kind, _ in entry["status"]["messages"]]
            seen["live_route"] = server.get("/lora_trainer/live")["runs"].get(train_node, {})

            # the next run on the node starts a new chart: its own points only, no preview of the last run
            short = with_ids_of(live_graph(output_name), workflow)
            short[train_node]["inputs"].update(max_steps=SHORT_RUN_STEPS, sample_every_n_steps=0)
            second = server.wait(server.queue(short))
            seen["second_run"] = {"status": second["status"]["status_str"],
                                  **wait_for(page, lambda s: "finished" in s["caption"], 60, "the second run's end")}
            seen["template_mismatches"] = template_prompt_mismatches(page, server.get("/object_info"))
            browser.close()
        seen["frontend_log"] = server.read_log()
        return seen
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def unresolved_nodes(nodes: list) -> list:
    """Nodes the frontend drew without widgets although they have some: their definition did not load."""
    return [n for n in nodes if n[1] != "Note" and n[2] == 0 and n[1] not in ("PreviewImage", "VAEDecode")]
