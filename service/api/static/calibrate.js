// The calibration panel: the form (its fields checked as the user types), the job's progress,
// its report, and its activation (confirmed first, see changes.js).

import { ApiProblem, call, getJson, modelPath } from "./api.js";
import { activateCalibration, confirmChange } from "./changes.js";
import { STRATEGY_HELP } from "./help.js";
import { live, state } from "./state.js";
import { $, clearProblem, fact, formatNumber, guarded, showProblem } from "./ui.js";

const POLL_MS = 400;
// Strategies that take a target rate: the target_* ones, and alpha for the guaranteed ones.
const takesTarget = (strategy) => strategy.startsWith("target_") || strategy.endsWith("_control");
const callbacks = { finished: async () => {} };

function fieldError(input, output, message) {
  output.textContent = message;
  input.setCustomValidity(message);
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
  return !message;
}

/** Check the fields the chosen strategy uses; says what to fix beside each; true when fine. */
function validate() {
  const strategy = $("strategy").value;
  let ok = true;
  if (takesTarget(strategy)) {
    const raw = $("target").value.trim();
    const value = Number(raw);
    const message = raw === "" ? `${strategy} needs a target rate.`
      : !(value > 0 && value < 1) ? `The target is a rate strictly between 0 and 1, not ${raw}.`
        : "";
    ok = fieldError($("target"), $("target-error"), message) && ok;
  }
  if (strategy === "cost") {
    const costs = [$("cost-fp").value, $("cost-fn").value].map((v) => v.trim());
    const values = costs.map(Number);
    let message = "";
    if (costs.some((v) => v === "") || values.some((v) => !Number.isFinite(v) || v < 0)) {
      message = "Each cost is a number of 0 or more.";
    } else if (values[0] === 0 && values[1] === 0) {
      message = "The costs cannot both be 0: every threshold would tie.";
    }
    ok = fieldError($("cost-fp"), $("cost-error"), message) && ok;
    $("cost-fn").setCustomValidity(message);
  }
  $("start-calibration").disabled = !ok;
  return ok;
}

function showStrategy() {
  const strategy = $("strategy").value;
  $("strategy-help").textContent = STRATEGY_HELP[strategy] ?? "";
  $("target-field").hidden = !takesTarget(strategy);
  $("delta-field").hidden = strategy !== "fdr_control";
  $("cost-fields").hidden = strategy !== "cost";
  validate();
}

/** Show a finished job's report, and whether it can still be activated. */
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
  $("report-facts").replaceChildren(...facts.flatMap(([term, value]) => fact(term, value)));
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
    : "Activate this calibration…";
  $("calibration-report").hidden = false;
}

/** Hide the job and report: they belong to the model view that started them. */
export function resetCalibration() {
  $("calibration-job").hidden = true;
  $("calibration-report").hidden = true;
  $("report-facts").replaceChildren();
  $("report-warnings").replaceChildren();
}

async function poll(view, location) {
  for (;;) {
    const job = await getJson(location, view.scope.signal);
    live(view);
    view.calibration = job;
    $("calibration-progress").value = job.progress;
    $("calibration-status").textContent =
      `Calibration ${job.id}: ${job.status} (${Math.round(100 * job.progress)} %)`;
    if (job.status === "failed") {
      throw new ApiProblem({ title: "Calibration failed", detail: job.error || "no reason given" });
    }
    if (job.status === "succeeded") return job;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    live(view);
  }
}

async function start(event) {
  event.preventDefault();
  clearProblem();
  const view = state.view;
  const file = $("dataset-input").files[0];
  if (!file) {
    showProblem({ title: "No calibration zip", detail: "choose a zip of images/ and masks/" });
    return;
  }
  if (!validate()) return;
  const activate = $("activate-on-success").checked;
  if (activate && !(await confirmChange(view.model, { source: "calibration" }))) return;
  live(view);
  const strategy = $("strategy").value;
  const form = new FormData();
  form.append("dataset", file);
  form.append("strategy", strategy);
  if (takesTarget(strategy)) form.append("target", $("target").value.trim());
  if (strategy === "fdr_control" && $("delta").value.trim()) {
    form.append("delta", $("delta").value.trim());
  }
  if ($("recalibrate").value) form.append("recalibrate", $("recalibrate").value);
  if (strategy === "cost") {
    form.append("cost_fp", $("cost-fp").value.trim());
    form.append("cost_fn", $("cost-fn").value.trim());
  }
  form.append("activate", String(activate));
  // Sent only when asked for: a service without threshold-health warnings has no such field.
  if ($("force").checked) form.append("force", "true");
  resetCalibration();
  const path = `${modelPath(view.model.name)}/calibrations`;
  const response = await call(path, {
    method: "POST", body: form, mutating: true, signal: view.scope.signal,
  });
  const started = await response.json();
  live(view);
  $("calibration-job").hidden = false;
  const job = await poll(view, `${path}/${started.id}`);
  showReport(job);
  await callbacks.finished(view, job);
}

async function activate() {
  const job = state.view.calibration;
  const { report } = job;
  // A multi-class report has a threshold per class, all activated together.
  const classValues = report.summary?.thresholds ?? null;
  await activateCalibration(job.id, report.threshold, $("force").checked, classValues);
  if (state.view.calibration === job) {
    job.active = state.view.model.threshold?.calibration_id === job.id;
    showReport(job);
  }
}

/** Wire the form; `finished(view, job)` runs once a job has succeeded. */
export function wireCalibration(finished) {
  callbacks.finished = finished;
  $("strategy").addEventListener("change", showStrategy);
  for (const id of ["target", "cost-fp", "cost-fn"]) $(id).addEventListener("input", validate);
  $("calibration-form").addEventListener("submit", guarded(start));
  $("activate-calibration").addEventListener("click", guarded(activate));
  showStrategy();
}
