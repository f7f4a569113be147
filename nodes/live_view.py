"""What the browser shows of a run while it trains, kept so that a page opened (or reloaded) mid-run can
draw the run so far: per Train node, its chart points and its last in-training preview.

The server holds one `LiveRuns` (made where the pack's routes are registered, `register_routes`): it is
server state like ComfyUI's own queue and history, bounded (a few nodes, a few thousand points each) and
locked, because the executor thread writes while the web server's thread reads. The engine never sees it.
The routes serve only this memory: nothing taken from a request reaches the file system.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from aiohttp import web

ROUTE_LIVE = "/lora_trainer/live"
ROUTE_PREVIEW = "/lora_trainer/live/preview"
MAX_POINTS = 2000          # the same bound as the chart in the page (web/lora_trainer.js)
MAX_NODES = 8              # Train nodes remembered; the oldest run is forgotten first
SERIES = ("steps", "losses", "averages", "lrs", "effective")


def thin_in_place(run: dict) -> None:
    """Halve every series (keep every second point) while they are over MAX_POINTS: the chart keeps the shape
    of the whole run, as the page's own copy does."""
    while len(run["steps"]) > MAX_POINTS:
        for name in SERIES:
            run[name] = run[name][::2]
    while len(run["validation"]) > MAX_POINTS:
        run["validation"] = run["validation"][::2]


class LiveRuns:
    def __init__(self):
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, dict] = OrderedDict()
        self._previews: dict[str, bytes] = {}
        self._started_runs = 0

    def record(self, node_id: str, event: dict) -> int:
        """One progress event of a Train node, as sent to the page; returns the id of the run it belongs to
        (one per started run, increasing), which the page uses to tell runs apart."""
        with self._lock:
            if event.get("started") or node_id not in self._runs:
                self._started_runs += 1
                self._runs[node_id] = self._new_run(event, self._started_runs)
                self._runs.move_to_end(node_id)
                self._previews.pop(node_id, None)
                while len(self._runs) > MAX_NODES:
                    forgotten, _ = self._runs.popitem(last=False)
                    self._previews.pop(forgotten, None)
            run = self._runs[node_id]
            for key in ("run", "total", "epoch", "epochs", "seconds_left", "steps_per_second", "status"):
                if key in event:
                    run[key] = event[key]
            if "validation_loss" in event:
                run["validation"].append([event["step"], event["validation_loss"]])
            if "loss" in event:
                for name, value in zip(SERIES, (event["step"], event["loss"], event.get("average_loss", event["loss"]),
                                                event.get("lr", 0.0), event.get("effective_lr", event.get("lr", 0.0)))):
                    run[name].append(value)
            thin_in_place(run)
            return run["run_id"]

    @staticmethod
    def _new_run(event: dict, run_id: int) -> dict:
        history = event.get("history") or {}
        run = {"run": event.get("run", ""), "run_id": run_id, "preview_count": 0,
               "validation": [list(pair) for pair in history.get("validation", [])]}
        for name in SERIES:
            run[name] = list(history.get(name, []))
        thin_in_place(run)
        return run

    def preview(self, node_id: str, step: int, image_bytes: bytes) -> dict:
        """Keeps a node's newest preview; returns the event that tells the page (its step and number)."""
        with self._lock:
            run = self._runs.get(node_id)
            if run is None:
                return {}
            run["preview_count"] += 1
            run["preview_step"] = step
            self._previews[node_id] = image_bytes
            return {"step": step, "preview_step": step, "preview_count": run["preview_count"]}

    def snapshot(self) -> dict:
        with self._lock:
            return {node_id: {**run, **{name: list(run[name]) for name in SERIES},
                              "validation": [list(pair) for pair in run["validation"]]}
                    for node_id, run in self._runs.items()}

    def preview_bytes(self, node_id: str) -> bytes | None:
        with self._lock:
            return self._previews.get(node_id)


def register_routes(routes: web.RouteTableDef, live: LiveRuns) -> None:
    """GET /lora_trainer/live: every remembered run's chart; GET /lora_trainer/live/preview?node=ID: the last
    preview of that node (JPEG), looked up in memory by the node id, 404 when there is none."""

    @routes.get(ROUTE_LIVE)
    async def live_runs(request: web.Request) -> web.Response:
        return web.json_response({"runs": live.snapshot()}, headers={"Cache-Control": "no-store"})

    @routes.get(ROUTE_PREVIEW)
    async def live_preview(request: web.Request) -> web.Response:
        image = live.preview_bytes(request.query.get("node", ""))
        if image is None:
            return web.Response(status=404, text="no preview for this node")
        return web.Response(body=image, content_type="image/jpeg", headers={"Cache-Control": "no-store"})
