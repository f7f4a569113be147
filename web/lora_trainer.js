// Live loss on the Train node: listens for the pack's "lora_trainer.progress" events and draws
// the recent loss curve under the node's widgets.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const HISTORY = 500;
const lossesByNode = new Map();

const CHART_HEIGHT = 60;
const TEXT_ROOM = 40; // the frontend's own progress text sits right under the widgets, above the chart

// y just below the node's ordinary widgets (DOM widgets such as the progress text are laid out apart)
function chartTop(node) {
  let bottom = 0;
  for (const widget of node.widgets ?? []) {
    if (widget.element) continue;
    const y = widget.last_y ?? widget.y ?? 0;
    const height = widget.computeSize?.(node.size[0])?.[1] ?? 20;
    bottom = Math.max(bottom, y + height);
  }
  return bottom + 6;
}

function drawLoss(node, ctx) {
  const losses = lossesByNode.get(String(node.id));
  if (!losses || losses.length < 2) return;
  const width = node.size[0] - 20;
  const height = CHART_HEIGHT;
  const top = chartTop(node) + TEXT_ROOM;
  if (node.size[1] < top + height + 10) node.setSize([node.size[0], top + height + 10]);
  const low = Math.min(...losses);
  const high = Math.max(...losses);
  const span = high - low || 1;
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(10, top, width, height);
  ctx.strokeStyle = "#6cf";
  ctx.beginPath();
  losses.forEach((value, i) => {
    const x = 10 + (width * i) / (losses.length - 1);
    const y = top + height - ((value - low) / span) * height;
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  ctx.fillText(`loss ${losses[losses.length - 1].toFixed(4)}`, 14, top + 12);
  ctx.restore();
}

app.registerExtension({
  name: "comfyui-lora-trainer.live-loss",
  setup() {
    api.addEventListener("lora_trainer.progress", ({ detail }) => {
      // a node inside a subgraph runs as "<subgraph node>:<its id>"; the canvas node knows only the last part
      const key = String(detail.node).split(":").pop();
      if (detail.step === 1) lossesByNode.set(key, []);
      const losses = lossesByNode.get(key) ?? [];
      losses.push(detail.loss);
      if (losses.length > HISTORY) losses.shift();
      lossesByNode.set(key, losses);
      app.graph.setDirtyCanvas(true, false);
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "LoRATrain") return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      drawLoss(this, ctx);
    };
  },
});
