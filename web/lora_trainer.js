// The pack's views in ComfyUI's frontend, each a DOM widget on its node (so they draw the same in the classic
// canvas and in the newer Vue node rendering, where a node's own canvas drawing is not called):
// - Train: a live chart of the loss (and its moving average, the validation loss), the scheduled and the
//   effective learning rate, step / epoch / time left, and the last in-training preview. The server keeps the
//   run so far (GET /lora_trainer/live), so a page opened or reloaded mid-run draws it all.
// - Load Dataset Folder and Bucket & Cache Latents: their summary, and the bucket histogram.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "lora_trainer.progress";
const MAX_POINTS = 2000;             // as the server's copy (nodes/live_view.py): halved past this, shape kept
const SERIES = ["steps", "losses", "averages", "lrs", "effective"];
const COLORS = { loss: "#6cf", average: "#fff", validation: "#f55", lr: "#b9f", effective: "#6d6" };
const CHART_HEIGHT = 130;
const PREVIEW_HEIGHT = 220;

const runs = new Map();              // execution node id ("6", or "12:6" inside a subgraph) -> its run's chart
const views = new Set();             // the views on the canvas now

// every event carries the server's run_id (one per started run, increasing), so a page can tell runs apart
const newRun = (from = {}) => ({
  run: from.run ?? "", run_id: from.run_id ?? -1, total: from.total ?? 0, epoch: from.epoch ?? 0,
  epochs: from.epochs ?? 0, seconds_left: from.seconds_left, steps_per_second: from.steps_per_second,
  status: from.status, preview_step: from.preview_step, preview_count: from.preview_count,
  validation: (from.validation ?? []).map((pair) => [...pair]),
  ...Object.fromEntries(SERIES.map((name) => [name, [...(from[name] ?? [])]])),
});

const thinInPlace = (run) => {
  if (run.steps.length > MAX_POINTS) for (const name of SERIES) run[name] = run[name].filter((_, i) => i % 2 === 0);
  if (run.validation.length > MAX_POINTS) run.validation = run.validation.filter((_, i) => i % 2 === 0);
};

function record(key, event) {
  let run = runs.get(key);
  if (event.started || !run || (event.run_id !== undefined && event.run_id !== run.run_id)) run = newRun(event);
  for (const name of ["run", "run_id", "total", "epoch", "epochs", "seconds_left", "steps_per_second", "status",
    "preview_step", "preview_count"]) {
    if (event[name] !== undefined) run[name] = event[name];
  }
  if (event.validation_loss !== undefined) run.validation.push([event.step, event.validation_loss]);
  if (event.loss !== undefined) {
    run.steps.push(event.step);
    run.losses.push(event.loss);
    run.averages.push(event.average_loss ?? event.loss);
    run.lrs.push(event.lr ?? 0);
    run.effective.push(event.effective_lr ?? event.lr ?? 0);
  }
  thinInPlace(run);
  runs.set(key, run);
}

async function loadRunsSoFar() {
  try {
    const response = await api.fetchApi("/lora_trainer/live", { cache: "no-store" });
    if (!response.ok) return;
    const { runs: saved } = await response.json();
    for (const [key, run] of Object.entries(saved ?? {})) {
      const local = runs.get(key);
      if (local && local.run_id > run.run_id) continue;              // a newer run started meanwhile: keep it
      const merged = newRun(run);
      merged.restored_points = merged.steps.length;
      if (local && local.run_id === run.run_id) {
        // events of this run that arrived while the request was out are newer than the copy: keep them
        const lastSaved = merged.steps.length ? last(merged.steps) : -1;
        local.steps.forEach((step, i) => {
          if (step > lastSaved) for (const name of SERIES) merged[name].push(local[name][i]);
        });
        for (const pair of local.validation) if (pair[0] > lastSaved) merged.validation.push(pair);
        for (const name of ["status", "preview_step", "preview_count"]) merged[name] = local[name] ?? merged[name];
      }
      runs.set(key, merged);
    }
    for (const view of views) view.schedule();
  } catch (error) {
    console.warn("comfyui-lora-trainer: could not load the runs so far", error);
  }
}

// The execution id of a canvas node: its id at the top level; inside a subgraph the run's id ends in ":<id>"
// (the newest such run; the canvas node does not know its subgraph's path).
function executionKey(node) {
  const topLevel = !node.graph || node.graph === app.graph || node.graph === app.rootGraph || !node.graph.isSubgraph;
  if (topLevel) return String(node.id);
  let best = null;
  for (const [key, run] of runs) {
    if (key.includes(":") && key.endsWith(`:${node.id}`) && (!best || run.run_id > runs.get(best).run_id)) best = key;
  }
  return best ?? `?:${node.id}`;
}

// Whether the run on this id is this node's: run ids repeat across workflows (several templates have Train at
// the same id), so a run is drawn on a node whose output_name (or resume_from) names it
function runOfNode(node, run) {
  if (!run) return null;
  const names = ["output_name", "resume_from"].map((name) => node.widgets?.find((w) => w.name === name)?.value)
    .filter((value) => typeof value === "string" && value.trim());
  if (!names.length || !run.run) return run;
  const own = names.some((name) => run.run === name.trim()
    || new RegExp(`^${escapeRegExp(name.trim())}_\\d+$`).test(run.run));
  return own ? run : null;
}

const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

function formatSeconds(seconds) {
  if (seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 90) return `${Math.round(seconds)} s left`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min left`;
  return `${(seconds / 3600).toFixed(1)} h left`;
}

const last = (series) => series[series.length - 1];

function canvasContext(canvas, height) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(120, canvas.clientWidth || canvas.parentElement?.clientWidth || 300);
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, width, height };
}

function drawChart(canvas, run) {
  const { ctx, width, height } = canvasContext(canvas, CHART_HEIGHT);
  ctx.fillStyle = "rgba(0,0,0,0.3)";
  ctx.fillRect(0, 0, width, height);
  if (!run || run.steps.length < 1) {
    ctx.fillStyle = "#999";
    ctx.font = "12px sans-serif";
    ctx.fillText(run ? "waiting for the first step..." : "the loss chart appears here while training", 8, 20);
    return;
  }
  const pad = { left: 6, right: 6, top: 8, bottom: 8 };
  const first = run.steps[0];
  // the x axis spans the points drawn (how far along the run is, the caption says): a long run's first
  // hundred steps still fill the chart
  const end = last(run.steps);
  const validation = run.validation.filter(([step]) => step >= first);
  const values = run.losses.concat(validation.map(([, value]) => value));
  const low = Math.min(...values);
  const high = Math.max(...values);
  const span = high - low || Math.abs(high) || 1;
  const xOf = (step) => pad.left + ((width - pad.left - pad.right) * (step - first)) / Math.max(1, end - first);
  const yScaled = (fraction) => height - pad.bottom - fraction * (height - pad.top - pad.bottom);
  const yOf = (value) => yScaled((value - low) / span);
  const polyline = (series, color, yFor, dash = []) => {
    ctx.strokeStyle = color;
    ctx.setLineDash(dash);
    ctx.beginPath();
    series.forEach((value, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, xOf(run.steps[i]), yFor(value)));
    ctx.stroke();
    ctx.setLineDash([]);
  };
  ctx.lineWidth = 1;
  // each learning rate on its own scale (0 to its largest), drawn first so the loss sits on top: an adaptive
  // optimizer's effective lr is far below its scheduled "lr 1.0", and both shapes matter
  const peakRate = Math.max(...run.lrs);
  const peakEffective = Math.max(...run.effective);
  const adaptive = hasEffectiveLr(run);
  if (peakRate > 0) polyline(run.lrs, COLORS.lr, (value) => yScaled(value / peakRate), [4, 3]);
  if (adaptive && peakEffective > 0) {
    polyline(run.effective, COLORS.effective, (value) => yScaled(value / peakEffective));
  }
  polyline(run.losses, COLORS.loss, yOf);
  ctx.lineWidth = 1.5;
  polyline(run.averages, COLORS.average, yOf);
  ctx.fillStyle = COLORS.validation;
  for (const [step, value] of validation) ctx.fillRect(xOf(step) - 2.5, yOf(value) - 2.5, 5, 5);
  ctx.fillStyle = "#bbb";
  ctx.font = "10px sans-serif";
  ctx.fillText(high.toPrecision(3), pad.left + 2, pad.top + 8);
  ctx.fillText(low.toPrecision(3), pad.left + 2, height - pad.bottom - 2);
  if (peakRate > 0) {
    const label = `lr max ${peakRate.toPrecision(3)}` + (adaptive ? `, eff max ${peakEffective.toPrecision(3)}` : "");
    ctx.fillText(label, width - pad.right - ctx.measureText(label).width - 2, pad.top + 8);
  }
}

// an adaptive optimizer (DAdaptation, Prodigy) reports an effective lr other than the scheduled one
const hasEffectiveLr = (run) => run.effective.some((value, i) => value !== run.lrs[i]);

function swatch(color, text) {
  return `<span style="color:${color}">\u25A0</span> ${text}`;
}

function captionLines(run) {
  if (!run || !run.steps.length) return [run?.run ? `run ${run.run}` : "", ""];
  const step = last(run.steps);
  const place = [`step ${step}/${run.total}`];
  if (run.epochs) place.push(`epoch ${run.epoch}/${run.epochs}`);
  if (run.steps_per_second) place.push(`${run.steps_per_second.toFixed(2)} step/s`);
  const left = run.status ?? (step >= run.total ? "done" : formatSeconds(run.seconds_left));
  if (left) place.push(left);
  const values = [swatch(COLORS.loss, `loss ${last(run.losses).toFixed(4)}`),
    swatch(COLORS.average, `avg ${last(run.averages).toFixed(4)}`)];
  if (run.validation.length) values.push(swatch(COLORS.validation, `val ${last(run.validation)[1].toFixed(4)}`));
  values.push(swatch(COLORS.lr, `lr ${last(run.lrs).toPrecision(3)}`));
  if (hasEffectiveLr(run)) values.push(swatch(COLORS.effective, `eff ${last(run.effective).toPrecision(3)}`));
  return [`${run.run ? run.run + " \u00B7 " : ""}${place.join(" \u00B7 ")}`, values.join("&nbsp; ")];
}

function element(tag, style, parent) {
  const made = document.createElement(tag);
  Object.assign(made.style, style);
  parent?.append(made);
  return made;
}

const PANEL_STYLE = { display: "flex", flexDirection: "column", gap: "3px", width: "100%", boxSizing: "border-box",
  font: "11px sans-serif", color: "#ddd", overflow: "hidden", pointerEvents: "none" };

// Train's view: chart, two caption lines, and the last preview
function addTrainView(node) {
  const root = element("div", PANEL_STYLE);
  root.className = "lora-trainer-live";
  const canvas = element("canvas", { width: "100%", height: `${CHART_HEIGHT}px`, borderRadius: "4px",
    flex: "none" }, root);
  const line = { whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis", lineHeight: "14px",
    height: "14px", flex: "none" };
  const where = element("div", line, root);
  const values = element("div", line, root);
  const preview = element("img", { width: "100%", height: `${PREVIEW_HEIGHT}px`, objectFit: "contain",
    display: "none", flex: "none" }, root);
  preview.className = "lora-trainer-preview";
  preview.alt = "last in-training preview";
  let pending = false;
  const view = {
    node,
    // events can come faster than frames: draw at most once per frame
    schedule() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        view.refresh();
      });
    },
    refresh() {
      const key = executionKey(node);
      const run = runOfNode(node, runs.get(key));
      root.dataset.restoredPoints = String(run?.restored_points ?? -1);
      drawChart(canvas, run);
      const [first, second] = captionLines(run);
      where.textContent = first;
      values.innerHTML = second;
      root.dataset.points = String(run?.steps.length ?? 0);
      root.dataset.step = String(run?.steps.length ? last(run.steps) : 0);
      // each preview of a run has its own number (several sample prompts share a step): the URL names the
      // run and that number, so a browser cache never shows an older image
      const shown = run?.preview_count ? `${run.run_id}-${run.preview_count}` : undefined;
      if (shown !== undefined && preview.dataset.shown !== shown) {
        preview.dataset.shown = shown;
        preview.src = api.apiURL(`/lora_trainer/live/preview?node=${encodeURIComponent(key)}&n=${shown}`);
        preview.style.display = "block";
      } else if (shown === undefined && preview.dataset.shown) {
        hidePreview();
      }
    },
  };
  const hidePreview = () => {
    delete preview.dataset.shown;
    preview.removeAttribute("src");
    preview.style.display = "none";
  };
  preview.addEventListener("error", hidePreview);        // gone from the server (restarted): no broken box
  const height = () => CHART_HEIGHT + 2 * 14 + 12 + (preview.style.display === "none" ? 0 : PREVIEW_HEIGHT + 3);
  node.addDOMWidget("lora_trainer_live", "lora_trainer_live", root, {
    serialize: false, hideOnZoom: false, getMinHeight: height, getMaxHeight: height, getHeight: height,
  });
  preview.addEventListener("load", () => {
    // the first preview makes the view taller: grow the node to hold it
    const needed = node.computeSize?.()[1];
    if (needed > node.size[1]) node.setSize([node.size[0], needed]);
    node.setDirtyCanvas?.(true, true);
  });
  view.resizes = new ResizeObserver(() => view.schedule());
  view.resizes.observe(canvas);
  return view;
}

const BUCKET_CHART_HEIGHT = 64;
const SUMMARY_TEXT_HEIGHT = 96;

function drawBuckets(canvas, buckets) {
  const { ctx, width, height } = canvasContext(canvas, BUCKET_CHART_HEIGHT);
  ctx.fillStyle = "rgba(0,0,0,0.3)";
  ctx.fillRect(0, 0, width, height);
  const widest = Math.max(...buckets.map(([, , count]) => count), 1);
  const slot = Math.min(56, width / Math.max(1, buckets.length));
  ctx.font = "9px sans-serif";
  buckets.forEach(([w, h, count], i) => {
    const bar = ((height - 24) * count) / widest;
    ctx.fillStyle = COLORS.loss;
    ctx.fillRect(i * slot + 3, height - 12 - bar, Math.max(2, slot - 6), bar);
    ctx.fillStyle = "#ccc";
    ctx.fillText(String(count), i * slot + 3, height - 14 - bar);
    if (slot > 34) ctx.fillText(`${w}x${h}`, i * slot + 2, height - 2);
  });
}

// Load Dataset Folder's and Bucket & Cache Latents' view: the node's summary (and the bucket histogram). Its
// room is reserved from the start, so a node does not grow over its neighbours when it has run.
function addSummaryView(node, withBuckets) {
  const root = element("div", { ...PANEL_STYLE, pointerEvents: "auto" });
  root.className = "lora-trainer-summary";
  root.dataset.nodeType = node.comfyClass ?? node.type;
  const canvas = withBuckets ? element("canvas", { width: "100%", height: `${BUCKET_CHART_HEIGHT}px`,
    borderRadius: "4px" }, root) : null;
  const text = element("pre", { margin: 0, whiteSpace: "pre-wrap", overflowY: "auto",
    height: `${SUMMARY_TEXT_HEIGHT}px`, font: "10px monospace", background: "rgba(0,0,0,0.2)" }, root);
  text.textContent = withBuckets ? "buckets and latents appear here once this node has run"
    : "the dataset's folders, images and repeats appear here once this node has run";
  const height = () => SUMMARY_TEXT_HEIGHT + (withBuckets ? BUCKET_CHART_HEIGHT + 3 : 0) + 4;
  node.addDOMWidget("lora_trainer_summary", "lora_trainer_summary", root, {
    serialize: false, hideOnZoom: false, getMinHeight: height, getMaxHeight: height, getHeight: height,
  });
  let buckets = [];
  const resizes = canvas ? new ResizeObserver(() => drawBuckets(canvas, buckets)) : null;
  resizes?.observe(canvas);
  const onExecuted = node.onExecuted;
  node.onExecuted = function (output) {
    onExecuted?.apply(this, arguments);
    text.textContent = (output?.text ?? []).join("\n");
    buckets = output?.lora_trainer_buckets ?? [];
    if (canvas) drawBuckets(canvas, buckets);
    root.dataset.buckets = String(buckets.length);
    root.dataset.shown = "1";
  };
  return () => resizes?.disconnect();
}

app.registerExtension({
  name: "comfyui-lora-trainer.live-loss",
  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const key = String(detail.node);
      record(key, detail);
      // a resumed run starts with its earlier points, which the server keeps (the event does not carry them)
      if (detail.started && detail.step > 0) loadRunsSoFar();
      for (const view of views) if (executionKey(view.node) === key) view.schedule();
    });
    // a reconnect (server restarted, page woke up) may have missed events: take the server's copy again
    api.addEventListener("reconnected", loadRunsSoFar);
    loadRunsSoFar();
  },
  nodeCreated(node) {
    const type = node.comfyClass ?? node.type;
    let release = null;
    if (type === "LoRATrain") {
      const view = addTrainView(node);
      views.add(view);
      release = () => {
        views.delete(view);
        view.resizes.disconnect();
      };
      requestAnimationFrame(() => view.refresh());
    } else if (type === "LoRALoadDatasetFolder" || type === "LoRABucketCacheLatents") {
      release = addSummaryView(node, type === "LoRABucketCacheLatents");
    }
    if (release) {
      const onRemoved = node.onRemoved;
      node.onRemoved = function () {
        release();
        return onRemoved?.apply(this, arguments);
      };
    }
  },
});
