// The threshold explorer: pick a model, drop an image, move the threshold, calibrate.
// It uses only the public HTTP API; the probability map is fetched once per image and every
// re-thresholding happens here, in the browser.

import { ApiProblem, call, getJson, modelPath } from "./api.js";
import { parseNpy, valueRange } from "./npy.js";
import { drawRoc, markCut } from "./roc.js";

const $ = (id) => document.getElementById(id);
const MASK_RGBA = [255, 0, 110, 255]; // drawn opaque; the opacity control fades the whole layer
const POLL_MS = 400;

const state = {
  models: [], // ModelInfo of every served model
  model: null, // the chosen ModelInfo
  threshold: 0.5, // the exact cut (the slider snaps to its step, this does not)
  probabilities: null, // {data, height, width, range, buffer} of the current image
  bitmap: null, // the decoded image, or null where the browser cannot draw its format
  fileName: "image",
  report: null, // the report whose ROC curve is drawn
  zoomed: true, // the ROC curve zoomed onto its operating points, which crowd a good curve's corner
  calibration: null, // the calibration job shown in the calibration panel
};

// ---- problems ------------------------------------------------------------------------------

function showProblem(problem) {
  $("problem-title").textContent = problem.title || "Error";
  $("problem-detail").textContent = problem.detail || "";
  $("problem").hidden = false;
}

function clearProblem() {
  $("problem").hidden = true;
}

/** Run an action; a failure is shown as the problem's title and detail, never thrown. */
function guarded(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      const problem = error instanceof ApiProblem
        ? error.problem
        : { title: "Something went wrong in the page", detail: String(error?.message || error) };
      showProblem(problem);
    }
  };
}

// ---- the model panel -----------------------------------------------------------------------

function formatNumber(value) {
  // Four significant digits without trailing zeros: 1.05, not 1.050.
  if (value === null || value === undefined) return "–";
  return String(Number(Number(value).toPrecision(4)));
}

function describeWarnings(warnings) {
  if (warnings === undefined) return "not available";
  if (!warnings.length) return "none";
  return warnings.map((w) => `${w.severity} (${w.code}): ${w.message}`).join("; ");
}

async function describeDrift(info) {
  // Drift exists once the service reports it; before that the page says so instead of asking.
  if (!("drift_status" in info)) return "not available";
  try {
    const drift = await getJson(`${modelPath(info.name)}/drift`);
    const parts = [drift.status];
    if (drift.n_images !== undefined) parts.push(`${drift.n_images} of ${drift.window} images`);
    if (drift.score_distance !== null && drift.score_distance !== undefined) {
      parts.push(`score distance ${formatNumber(drift.score_distance)}`);
    }
    const fractions = drift.foreground_fraction;
    if (fractions && fractions.served !== null && fractions.calibration !== null) {
      parts.push(`foreground ${formatNumber(fractions.served)} served vs ` +
        `${formatNumber(fractions.calibration)} calibrated`);
    }
    return parts.join("; ");
  } catch {
    return info.drift_status ?? "not available";
  }
}

async function showModel(info) {
  state.model = info;
  const threshold = info.threshold ?? {}; // a model that failed to load may have none
  $("model-head").textContent = info.available === false
    ? `unavailable: ${info.error || "it failed to load"}`
    : `${info.architecture.head}` +
      (info.outputs_probabilities ? " (probabilities in [0, 1])" : " (unbounded scores)");
  $("model-threshold").textContent = formatNumber(threshold.value);
  $("model-source").textContent = threshold.calibration_id
    ? `${threshold.source} ${threshold.calibration_id}`
    : threshold.source ?? "–";
  $("model-warnings").textContent = describeWarnings(info.warnings);
  $("model-drift").textContent = await describeDrift(info);
  $("model-head").dataset.model = info.name;
}

async function refreshModel() {
  const info = await getJson(modelPath(state.model.name));
  const index = state.models.findIndex((m) => m.name === info.name);
  state.models[index] = info;
  await showModel(info);
  return info;
}

async function chooseModel(name) {
  clearProblem();
  const info = state.models.find((m) => m.name === name);
  await showModel(info);
  if (info.available === false) {
    showProblem({ title: "Model unavailable", detail: info.error || `${name} failed to load` });
    return;
  }
  setSliderRange();
  setThreshold(info.threshold.value);
  await loadRoc();
  if (state.file) await loadImage(state.file);
}

// ---- the threshold -------------------------------------------------------------------------

function bounds() {
  const [low, high] = state.model?.output_range ?? [0, 1];
  const [mapLow, mapHigh] = state.probabilities?.range ?? [0, 1];
  const active = state.model?.threshold.value ?? 0.5;
  const lower = low ?? Math.min(mapLow, active);
  const upper = high ?? Math.max(mapHigh, active, lower + 1e-6);
  return [lower, upper];
}

// The slider is a position in SLIDER_STEPS steps over the range; the threshold is kept exact,
// so the range's ends and a chosen operating point are the very values, not rounded ones.
const SLIDER_STEPS = 1000;

function thresholdAt(position) {
  const [low, high] = bounds();
  if (position >= SLIDER_STEPS) return high;
  return position <= 0 ? low : low + ((high - low) * position) / SLIDER_STEPS;
}

function positionOf(threshold) {
  const [low, high] = bounds();
  const position = Math.round(((threshold - low) / (high - low)) * SLIDER_STEPS);
  return Math.min(SLIDER_STEPS, Math.max(0, position));
}

function setSliderRange() {
  const [low, high] = bounds();
  const slider = $("threshold-slider");
  slider.min = "0";
  slider.max = String(SLIDER_STEPS);
  slider.step = "1";
  slider.dataset.low = String(low);
  slider.dataset.high = String(high);
  $("threshold-number").min = String(low);
  $("threshold-number").max = String(high);
}

function setThreshold(value, { fromSlider = false } = {}) {
  state.threshold = value;
  const slider = $("threshold-slider");
  if (!fromSlider) slider.value = String(positionOf(value));
  slider.setAttribute("aria-valuetext", formatNumber(value));
  $("threshold-number").value = String(value);
  drawMask();
  if (state.report) markCut($("roc"), state.report.roc, value);
}

// ---- the image and its mask ----------------------------------------------------------------

function sizeCanvas(canvas, width, height) {
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
}

function drawBackground() {
  const probs = state.probabilities;
  const canvas = $("image-canvas");
  sizeCanvas(canvas, probs.width, probs.height);
  const context = canvas.getContext("2d");
  if (state.bitmap && !$("show-probabilities").checked) {
    context.drawImage(state.bitmap, 0, 0, probs.width, probs.height);
    return;
  }
  // The probability map as grey levels, stretched over its own range.
  const [low, high] = probs.range;
  const scale = high > low ? 255 / (high - low) : 0;
  const image = context.createImageData(probs.width, probs.height);
  const pixels = new Uint32Array(image.data.buffer);
  for (let i = 0; i < probs.data.length; i += 1) {
    const grey = Math.round((probs.data[i] - low) * scale);
    pixels[i] = 0xff000000 | (grey << 16) | (grey << 8) | grey;
  }
  context.putImageData(image, 0, 0);
}

let maskFrame = 0;

function drawMask() {
  const probs = state.probabilities;
  if (!probs) return;
  // One redraw per animation frame, however fast the slider moves.
  cancelAnimationFrame(maskFrame);
  maskFrame = requestAnimationFrame(() => {
    const canvas = $("mask-canvas");
    sizeCanvas(canvas, probs.width, probs.height);
    const context = canvas.getContext("2d");
    const image = context.createImageData(probs.width, probs.height);
    const pixels = new Uint32Array(image.data.buffer);
    const [r, g, b, a] = MASK_RGBA;
    const colour = ((a << 24) | (b << 16) | (g << 8) | r) >>> 0; // little-endian RGBA
    const cut = state.threshold;
    let foreground = 0;
    for (let i = 0; i < probs.data.length; i += 1) {
      if (probs.data[i] >= cut) {
        pixels[i] = colour;
        foreground += 1;
      }
    }
    context.putImageData(image, 0, 0);
    const fraction = foreground / probs.data.length;
    $("foreground-fraction").textContent =
      `${(100 * fraction).toFixed(2)} % (${foreground} of ${probs.data.length} pixels)`;
  });
}

async function decodeInBrowser(file) {
  try {
    return await createImageBitmap(file);
  } catch {
    return null; // TIFF and 16-bit formats the browser cannot draw: show the map instead
  }
}

async function loadImage(file) {
  clearProblem();
  state.file = file;
  state.fileName = file.name.replace(/\.[^.]*$/, "") || "image";
  $("image-status").textContent = `Running ${state.model.name} on ${file.name}…`;
  const form = new FormData();
  form.append("image", file);
  let response;
  try {
    response = await call(`${modelPath(state.model.name)}/probabilities?format=npy`, {
      method: "POST",
      body: form,
    });
  } catch (error) {
    $("image-status").textContent = "";
    throw error;
  }
  const buffer = await response.arrayBuffer();
  const probs = parseNpy(buffer);
  probs.range = valueRange(probs.data);
  probs.buffer = buffer;
  state.probabilities = probs;
  state.bitmap = await decodeInBrowser(file);
  $("image-status").textContent = state.bitmap
    ? `${file.name}: ${probs.width} × ${probs.height} px`
    : `${file.name}: ${probs.width} × ${probs.height} px (the browser cannot draw this format; ` +
      "showing the probability map)";
  $("view").hidden = false;
  $("download-mask").disabled = false;
  $("download-probabilities").disabled = false;
  setSliderRange();
  setThreshold(state.threshold);
  drawBackground();
}

function saveBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

async function downloadMask() {
  clearProblem();
  const form = new FormData();
  form.append("image", state.file);
  const query = new URLSearchParams({ format: "png", threshold: String(state.threshold) });
  const response = await call(`${modelPath(state.model.name)}/mask?${query}`, {
    method: "POST",
    body: form,
  });
  saveBlob(await response.blob(), `${state.fileName}-mask.png`);
}

function downloadProbabilities() {
  const blob = new Blob([state.probabilities.buffer], { type: "application/octet-stream" });
  saveBlob(blob, `${state.fileName}-probabilities.npy`);
}

// ---- the ROC curve -------------------------------------------------------------------------

async function loadRoc() {
  const name = state.model.name;
  const { calibrations } = await getJson(`${modelPath(name)}/calibrations`);
  // The active calibration, else the newest that succeeded, so a manual override keeps a curve.
  const shown = calibrations.find((c) => c.active) ??
    calibrations.find((c) => c.status === "succeeded");
  state.report = null;
  $("roc").hidden = true;
  $("roc-zoom").hidden = true;
  $("roc-legend").hidden = true;
  $("operating-points").hidden = true;
  $("roc-interval").textContent = "";
  if (!shown) {
    $("roc-caption").textContent = "No calibration yet: upload one below.";
    return;
  }
  const calibration = await getJson(`${modelPath(name)}/calibrations/${shown.id}`);
  state.report = calibration.report;
  const report = calibration.report;
  $("roc-caption").textContent =
    `${shown.active ? "Active" : "Latest"} calibration ${shown.id}: ${report.strategy}, ` +
    `AUC ${formatNumber(report.auc)}, ${report.n_images} image(s).`;
  drawCurve();
  $("roc").hidden = false;
  $("roc-zoom").hidden = false;
  $("roc-legend").hidden = false;
  const interval = report.threshold_ci;
  $("roc-interval").textContent = interval
    ? `95 % bootstrap interval of the ${report.strategy} threshold: ` +
      `${formatNumber(interval[0])} – ${formatNumber(interval[1])} (thick part of the curve).`
    : "No bootstrap interval (it needs at least two images).";
  const rows = Object.entries(report.operating_points).map(([strategy, point]) => {
    const row = document.createElement("tr");
    for (const text of [strategy, formatNumber(point.threshold), point.tpr.toFixed(3),
      point.fpr.toFixed(3), point.f1.toFixed(3)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Use";
    button.setAttribute("aria-label", `Use the ${strategy} threshold ${point.threshold}`);
    button.addEventListener("click", () => setThreshold(point.threshold));
    const cell = document.createElement("td");
    cell.appendChild(button);
    row.appendChild(cell);
    return row;
  });
  $("operating-points").querySelector("tbody").replaceChildren(...rows);
  $("operating-points").hidden = false;
}

function drawCurve() {
  drawRoc($("roc"), state.report, state.zoomed, (_, point) => setThreshold(point.threshold));
  markCut($("roc"), state.report.roc, state.threshold);
  $("roc-zoom").setAttribute("aria-pressed", String(state.zoomed));
}

function toggleZoom() {
  state.zoomed = !state.zoomed;
  drawCurve();
}

// ---- thresholds and calibrations that change the service -----------------------------------

async function applyThreshold(threshold) {
  await refreshModel();
  setThreshold(threshold.value);
  await loadRoc();
}

async function setManual() {
  clearProblem();
  const response = await call(`${modelPath(state.model.name)}/threshold`, {
    method: "PUT",
    json: { value: state.threshold },
    mutating: true,
  });
  await applyThreshold(await response.json());
}

function showReport(calibration) {
  const report = calibration.report;
  const facts = [
    ["Threshold", formatNumber(report.threshold)],
    ["Strategy", report.target === null ? report.strategy : `${report.strategy} ${report.target}`],
    ["AUC", formatNumber(report.auc)],
    ["Average precision", formatNumber(report.average_precision)],
    ["Images", String(report.n_images)],
    ["Positive fraction", formatNumber(report.positive_fraction)],
    ["95 % interval", report.threshold_ci
      ? `${formatNumber(report.threshold_ci[0])} – ${formatNumber(report.threshold_ci[1])}`
      : "–"],
  ];
  $("report-facts").replaceChildren(...facts.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    return [dt, dd];
  }));
  const warnings = report.warnings;
  const items = warnings === undefined
    ? ["not available"]
    : warnings.length ? warnings.map((w) => `${w.severity} (${w.code}): ${w.message}`) : ["none"];
  $("report-warnings").replaceChildren(...items.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  $("activate-calibration").disabled = calibration.active;
  $("activate-calibration").textContent = calibration.active
    ? "This calibration is active"
    : "Activate this calibration";
  $("calibration-report").hidden = false;
}

async function pollCalibration(location) {
  for (;;) {
    const job = await getJson(location);
    state.calibration = job;
    $("calibration-progress").value = job.progress;
    $("calibration-status").textContent =
      `Calibration ${job.id}: ${job.status} (${Math.round(100 * job.progress)} %)`;
    if (job.status === "failed") {
      throw new ApiProblem({ title: "Calibration failed", detail: job.error || "no reason given" });
    }
    if (job.status === "succeeded") return job;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function startCalibration(event) {
  event.preventDefault();
  clearProblem();
  const file = $("dataset-input").files[0];
  if (!file) {
    showProblem({ title: "No calibration zip", detail: "choose a zip of images/ and masks/" });
    return;
  }
  const form = new FormData();
  form.append("dataset", file);
  form.append("strategy", $("strategy").value);
  if ($("target").value !== "") form.append("target", $("target").value);
  form.append("activate", String($("activate-on-success").checked));
  // Sent only when asked for: a service without threshold-health warnings has no such field.
  if ($("force").checked) form.append("force", "true");
  $("calibration-report").hidden = true;
  const path = `${modelPath(state.model.name)}/calibrations`;
  const response = await call(path, { method: "POST", body: form, mutating: true });
  const started = await response.json();
  $("calibration-job").hidden = false;
  const job = await pollCalibration(`${path}/${started.id}`);
  showReport(job);
  await refreshModel();
  if (job.active) setThreshold(state.model.threshold.value);
  await loadRoc();
}

async function activateCalibration() {
  clearProblem();
  const job = state.calibration;
  // force: activate despite a blocking warning, when the user ticked it.
  const force = $("force").checked ? "?force=true" : "";
  const path = `${modelPath(state.model.name)}/calibrations/${job.id}/activate${force}`;
  const response = await call(path, { method: "POST", mutating: true });
  state.calibration = { ...job, active: true };
  showReport(state.calibration);
  await applyThreshold(await response.json());
}

// ---- wiring --------------------------------------------------------------------------------

function wireDropzone() {
  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", guarded(async (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) await loadImage(file);
  }));
}

async function start() {
  $("problem-close").addEventListener("click", clearProblem);
  $("model-select").addEventListener("change", guarded((e) => chooseModel(e.target.value)));
  $("image-input").addEventListener("change", guarded(async (e) => {
    if (e.target.files[0]) await loadImage(e.target.files[0]);
  }));
  wireDropzone();
  $("opacity").addEventListener("input", (e) => {
    $("mask-canvas").style.opacity = e.target.value;
  });
  $("show-probabilities").addEventListener("change", () => drawBackground());
  $("threshold-slider").addEventListener("input", (e) => {
    setThreshold(thresholdAt(e.target.valueAsNumber), { fromSlider: true });
  });
  $("threshold-number").addEventListener("input", (e) => {
    if (Number.isFinite(e.target.valueAsNumber)) setThreshold(e.target.valueAsNumber);
  });
  $("roc-zoom").addEventListener("click", toggleZoom);
  $("set-manual").addEventListener("click", guarded(setManual));
  $("download-mask").addEventListener("click", guarded(downloadMask));
  $("download-probabilities").addEventListener("click", guarded(downloadProbabilities));
  $("calibration-form").addEventListener("submit", guarded(startCalibration));
  $("activate-calibration").addEventListener("click", guarded(activateCalibration));
  $("mask-canvas").style.opacity = $("opacity").value;

  const { models } = await getJson("/v1/models");
  state.models = models;
  if (!models.length) {
    showProblem({ title: "No models", detail: "this service serves no model; see UNET_MODEL_DIR" });
    return;
  }
  $("model-select").replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  await chooseModel(models[0].name);
  document.body.dataset.ready = "true"; // the browser tests wait for this
}

guarded(start)();
