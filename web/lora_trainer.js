// Live loss on the Train node: listens for the pack's "lora_trainer.progress" events and draws
// the recent loss curve (and its average, the validation loss and the effective lr) under the node's widgets.
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
  const run = lossesByNode.get(String(node.id));
  const losses = run?.losses;
  if (!losses || losses.length < 2) return;
  const width = node.size[0] - 20;
  const height = CHART_HEIGHT;
  const top = chartTop(node) + TEXT_ROOM;
  if (node.size[1] < top + height + 10) node.setSize([node.size[0], top + height + 10]);
  const first = run.steps[0];
  const last = run.steps[run.steps.length - 1];
  const validation = run.validation.filter(([step]) => step >= first);
  const values = losses.concat(validation.map(([, value]) => value));
  const low = Math.min(...values);
  const high = Math.max(...values);
  const span = high - low || 1;
  const xOf = (step) => 10 + (width * (step - first)) / Math.max(1, last - first);
  const yOf = (value) => top + height - ((value - low) / span) * height;
  const line = (series, color) => {
    ctx.strokeStyle = color;
    ctx.beginPath();
    series.forEach((value, i) => {
      if (i === 0) ctx.moveTo(xOf(run.steps[i]), yOf(value)); else ctx.lineTo(xOf(run.steps[i]), yOf(value));
    });
    ctx.stroke();
  };
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(10, top, width, height);
  line(losses, "#6cf");
  line(run.averages, "#fff");
  const rates = run.effective;
  const peak = Math.max(...rates);
  if (peak > 0) {                       // the effective lr, scaled to the chart's height (read its shape)
    ctx.strokeStyle = "#6c6";
    ctx.beginPath();
    rates.forEach((value, i) => {
      const x = xOf(run.steps[i]);
      const y = top + height - (value / peak) * height;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  ctx.fillStyle = "#f66";
  for (const [step, value] of validation) ctx.fillRect(xOf(step) - 2, yOf(value) - 2, 4, 4);
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  let caption = `loss ${losses[losses.length - 1].toFixed(4)} (avg ${run.averages[run.averages.length - 1].toFixed(4)})`;
  if (validation.length) caption += `  validation ${validation[validation.length - 1][1].toFixed(4)}`;
  if (peak > 0) caption += `  lr ${rates[rates.length - 1].toPrecision(3)}`;
  ctx.fillText(caption, 14, top + 12);
  ctx.restore();
}

app.registerExtension({
  name: "comfyui-lora-trainer.live-loss",
  setup() {
    api.addEventListener("lora_trainer.progress", ({ detail }) => {
      // a node inside a subgraph runs as "<subgraph node>:<its id>"; the canvas node knows only the last part
      const key = String(detail.node).split(":").pop();
      const fresh = () => ({ steps: [], losses: [], averages: [], effective: [], validation: [] });
      let run = lossesByNode.get(key);
      if (!run || (detail.loss !== undefined && run.steps.length && detail.step <= run.steps[run.steps.length - 1])) {
        run = fresh();                  // a new run (or the same node queued again) starts a new chart
      }
      if (detail.validation_loss !== undefined) run.validation.push([detail.step, detail.validation_loss]);
      if (detail.loss !== undefined) {
        run.steps.push(detail.step);
        run.losses.push(detail.loss);
        run.averages.push(detail.average_loss ?? detail.loss);
        run.effective.push(detail.effective_lr ?? detail.lr ?? 0);
        if (run.steps.length > HISTORY) for (const series of ["steps", "losses", "averages", "effective"]) {
          run[series].shift();
        }
      }
      lossesByNode.set(key, run);
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
