// The threshold explorer: pick a model, drop an image (and its ground truth), move the
// threshold, calibrate, and change the live threshold with a confirmation and a history.
// It uses only the public HTTP API; the probability map is fetched once per image and every
// re-thresholding and scoring happens here, in the browser.

import { call, getJson, modelPath } from "./api.js";
import { wireCalibration, resetCalibration } from "./calibrate.js";
import { showClasses } from "./classes.js";
import { loadHistory, resetHistory, wireChanges } from "./changes.js";
import { downloadName, saveBlob } from "./downloads.js";
import { installHelp } from "./help.js";
import { parseNpy, valueRange } from "./npy.js";
import { showObjects, wireObjects } from "./objects.js";
import { drawImage, drawMasks, readTruth } from "./overlay.js";
import { loadRoc, markRoc, resetRoc, toggleZoom } from "./rocpanel.js";
import { activeThreshold, classQuery, live, newImage, newModelView, state } from "./state.js";
import {
  offerSetManual, onThreshold, setSliderRange, setThreshold, wireThreshold,
} from "./threshold.js";
import { $, clearProblem, formatNumber, guarded, showProblem } from "./ui.js";

// ---- the model panel -----------------------------------------------------------------------

function describeWarnings(warnings) {
  if (warnings === undefined) return "not available";
  if (!warnings.length) return "none";
  return warnings.map((w) => `${w.severity} (${w.code}): ${w.message}`).join("; ");
}

async function describeDrift(view) {
  const info = view.model;
  // Drift exists once the service reports it; before that the page says so instead of asking.
  if (!("drift_status" in info)) return "not available";
  const drift = await getJson(`${modelPath(info.name)}/drift${classQuery(view)}`, view.scope.signal)
    .catch((error) => (error.name === "AbortError" ? Promise.reject(error) : null));
  if (!drift) return info.drift_status ?? "not available";
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
}

async function showModel(view) {
  const info = view.model;
  const threshold = activeThreshold(view) ?? {}; // a model that failed to load may have none
  $("model-head").textContent = info.available === false
    ? `unavailable: ${info.error || "it failed to load"}`
    : `${info.architecture?.head ?? "custom"}` +
      (info.outputs_probabilities ? " (probabilities in [0, 1])" : " (unbounded scores)");
  $("model-threshold").textContent = formatNumber(threshold.value);
  $("model-source").textContent = threshold.calibration_id
    ? `${threshold.source} ${threshold.calibration_id}`
    : threshold.source ?? "–";
  $("model-warnings").textContent = describeWarnings(info.warnings);
  $("drift-note").hidden = info.drift_status !== "no_reference";
  $("drift-note").textContent = info.drift_status === "no_reference"
    ? `Drift watching is off (no_reference): the ${threshold.source ?? "default"} threshold in ` +
      "force has no calibration set to compare served images with. Activate a calibration to " +
      "turn it on."
    : "";
  $("model-head").dataset.model = info.name;
  $("model-drift").textContent = "…";
  const drift = await describeDrift(view);
  live(view);
  $("model-drift").textContent = drift;
}

/** Fetch the view's model again (after a change) and show it. */
async function refreshModel(view) {
  const info = await getJson(modelPath(view.model.name), view.scope.signal);
  live(view);
  state.models[state.models.findIndex((m) => m.name === info.name)] = info;
  view.model = info;
  await showModel(view);
}

/** Empty everything that showed the image's results (map, masks, scores, downloads). */
function resetImageView() {
  $("view").hidden = true;
  $("evaluation").hidden = true;
  $("download-mask").disabled = true;
  $("download-probabilities").disabled = true;
  $("foreground-fraction").textContent = "–";
  if (state.view) showObjects(state.view);
  for (const id of ["image-canvas", "mask-canvas", "active-image-canvas", "active-mask-canvas"]) {
    $(id).width = 0;
    $(id).height = 0;
  }
}

async function chooseModel(name) {
  clearProblem();
  const view = newModelView(state.models.find((m) => m.name === name));
  $("model-select").value = name;
  resetImageView();
  resetRoc();
  resetHistory();
  resetCalibration();
  showClasses(view.model, view.className);
  setSliderRange();
  setThreshold(view.threshold);
  await showModel(view);
  if (view.model.available === false) {
    showProblem({ title: "Model unavailable", detail: view.model.error || `${name} failed to load` });
    return;
  }
  await Promise.all([loadRoc(view), loadHistory(view)]);
  if (state.input?.file) await runImage(view);
}

/** Put the chosen class on the slider: its cut, its ROC curve, its history and its map. */
async function chooseClass(name) {
  clearProblem();
  const view = state.view;
  view.className = name;
  if (view.image?.probabilities) showClassMap(view, view.image.probabilities);
  setSliderRange();
  setThreshold(view.cuts[name]);
  showObjects(view);
  drawImage();
  await showModel(view);
  await Promise.all([loadRoc(view), loadHistory(view)]);
  $("threshold-panel").dataset.class = name; // the browser tests wait for this
}

/** Make the chosen class's map the one the slider cuts (the only one, for a binary model). */
function showClassMap(view, probs) {
  const index = view.className === null ? 0 : view.model.classes.indexOf(view.className);
  probs.data = probs.maps[index] ?? probs.maps[0];
  probs.range = valueRange(probs.data);
}

// ---- the image -----------------------------------------------------------------------------

async function decodeInBrowser(file) {
  try {
    return await createImageBitmap(file);
  } catch {
    return null; // TIFF and 16-bit formats the browser cannot draw: show the map instead
  }
}

function busy(delta) {
  const panel = $("image-panel");
  const count = Number(panel.dataset.busy || 0) + delta;
  panel.dataset.busy = String(count);
  panel.setAttribute("aria-busy", String(count > 0));
}

/** Run the chosen image through `view`'s model and show its map, mask and scores. */
async function runImage(view) {
  const image = newImage(view);
  const { file } = state.input;
  resetImageView();
  $("image-status").textContent = `Running ${view.model.name} on ${file.name}…`;
  busy(+1);
  try {
    const form = new FormData();
    form.append("image", file);
    const response = await call(`${modelPath(view.model.name)}/probabilities?format=npy`, {
      method: "POST", body: form, signal: image.scope.signal,
    });
    const buffer = await response.arrayBuffer();
    live(image);
    const probs = parseNpy(buffer);
    showClassMap(view, probs);
    probs.buffer = buffer;
    const bitmap = await decodeInBrowser(file);
    live(image);
    image.probabilities = probs;
    image.bitmap = bitmap;
  } catch (error) {
    if (error.name !== "AbortError" && state.view === view) forgetImage();
    throw error;
  } finally {
    busy(-1);
  }
  const probs = image.probabilities;
  $("image-status").textContent = image.bitmap
    ? `${file.name}: ${probs.width} × ${probs.height} px, ${view.model.name}`
    : `${file.name}: ${probs.width} × ${probs.height} px, ${view.model.name} (the browser ` +
      "cannot draw this format; showing the probability map)";
  checkTruth();
  $("view").hidden = false;
  $("download-mask").disabled = false;
  $("download-probabilities").disabled = false;
  setSliderRange();
  setThreshold(view.threshold);
  showObjects(view);
  drawImage();
}

/** Forget the chosen image and ground truth after a failed upload: nothing of them stays. */
function forgetImage() {
  state.input = null;
  if (state.view) state.view.image = null;
  $("image-input").value = "";
  $("truth-input").value = "";
  $("image-status").textContent = "";
  resetImageView();
}

async function chooseImage(file) {
  clearProblem();
  state.input = { file, name: file.name.replace(/\.[^.]*$/, "") || "image", truth: null };
  $("truth-input").value = "";
  await runImage(state.view);
}

/** Say so when the ground truth does not fit the image; it is then not used. */
function checkTruth() {
  const truth = state.input?.truth;
  const probs = state.view?.image?.probabilities;
  if (truth && probs && (truth.width !== probs.width || truth.height !== probs.height)) {
    showProblem({
      title: "The ground truth does not fit the image",
      detail: `${truth.name} is ${truth.width} × ${truth.height} px, the image ` +
        `${probs.width} × ${probs.height} px; choose the mask made for this image.`,
    });
  }
}

async function chooseTruth(file) {
  clearProblem();
  if (!state.input) {
    $("truth-input").value = "";
    showProblem({ title: "No image yet", detail: "choose the image first, then its mask" });
    return;
  }
  const input = state.input;
  const truth = await readTruth(file);
  if (state.input !== input) return; // another image was chosen meanwhile
  input.truth = truth;
  checkTruth();
  drawMasks();
}

// ---- downloads -----------------------------------------------------------------------------

async function downloadMask() {
  clearProblem();
  const view = state.view;
  const threshold = view.threshold;
  const form = new FormData();
  form.append("image", state.input.file);
  const query = new URLSearchParams({ format: "png", threshold: String(threshold) });
  const response = await call(`${modelPath(view.model.name)}/mask?${query}`, {
    method: "POST", body: form, signal: view.image.scope.signal,
  });
  const blob = await response.blob();
  live(view.image);
  saveBlob(blob, `${downloadName("mask", threshold)}.png`);
}

function downloadProbabilities() {
  const blob = new Blob([state.view.image.probabilities.buffer], { type: "application/octet-stream" });
  saveBlob(blob, `${downloadName("probabilities")}.npy`);
}

// ---- after a change of the live threshold ----------------------------------------------------

async function thresholdChanged(view, threshold, moves) {
  live(view);
  await refreshModel(view);
  // A reset or restore moves the slider to the value in force; a manual set is already there.
  // Unless the user moved it while the change was on its way: what they chose then stays.
  if (view.moves === moves) setThreshold(activeThreshold(view)?.value ?? threshold.value);
  else offerSetManual();
  drawMasks();
  const panel = $("threshold-panel");
  panel.dataset.changed = String(Number(panel.dataset.changed || 0) + 1); // the browser tests wait for this
  await Promise.all([loadRoc(view), loadHistory(view)]);
}

async function calibrationFinished(view, job) {
  await refreshModel(view);
  if (job.active) setThreshold(activeThreshold(view).value);
  await Promise.all([loadRoc(view), loadHistory(view)]);
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
    if (file) await chooseImage(file);
  }));
}

/** The model the page opens on: the first binary one with probabilities (a sigmoid head), else
 * the first with probabilities, else the first. */
function firstModel(models) {
  const usable = models.filter((m) => m.available !== false);
  const binary = usable.filter((m) => !(m.classes?.length > 0));
  return (binary.find((m) => m.outputs_probabilities) ??
    usable.find((m) => m.outputs_probabilities) ?? usable[0] ?? models[0]).name;
}

async function start() {
  installHelp();
  $("problem-close").addEventListener("click", clearProblem);
  $("model-select").addEventListener("change", guarded((e) => chooseModel(e.target.value)));
  $("class-select").addEventListener("change", guarded((e) => chooseClass(e.target.value)));
  $("image-input").addEventListener("change", guarded(async (e) => {
    if (e.target.files[0]) await chooseImage(e.target.files[0]);
  }));
  $("truth-input").addEventListener("change", guarded(async (e) => {
    if (e.target.files[0]) await chooseTruth(e.target.files[0]);
  }));
  wireDropzone();
  wireThreshold();
  onThreshold(() => drawMasks());
  onThreshold(markRoc);
  $("opacity").addEventListener("input", (e) => {
    for (const id of ["mask-canvas", "active-mask-canvas"]) $(id).style.opacity = e.target.value;
  });
  $("show-probabilities").addEventListener("change", drawImage);
  $("show-active").addEventListener("change", drawImage);
  $("roc-zoom").addEventListener("click", toggleZoom);
  $("download-mask").addEventListener("click", guarded(downloadMask));
  $("download-probabilities").addEventListener("click", guarded(downloadProbabilities));
  wireObjects(onThreshold);
  wireChanges(thresholdChanged);
  wireCalibration(calibrationFinished);
  for (const id of ["mask-canvas", "active-mask-canvas"]) $(id).style.opacity = $("opacity").value;

  const { models } = await getJson("/v1/models");
  state.models = models;
  if (!models.length) {
    showProblem({ title: "No models", detail: "this service serves no model; see UNET_MODEL_DIR" });
    return;
  }
  $("model-select").replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  await chooseModel(firstModel(models));
  document.body.dataset.ready = "true"; // the browser tests wait for this
}

guarded(start)();
