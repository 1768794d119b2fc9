// The ROC panel: the shown calibration's curve, its operating points as a table, and the zoom.
// Reset empties it, so that nothing of another model's calibration can stay drawn or focusable.

import { getJson, modelPath } from "./api.js";
import { resetGuarantee, showGuarantee } from "./guarantee.js";
import { drawRoc, markCut } from "./roc.js";
import { live, state } from "./state.js";
import { setThreshold } from "./threshold.js";
import { $, formatNumber } from "./ui.js";

/** Hide and empty the panel: no curve, no points, no table rows. */
export function resetRoc() {
  $("roc").replaceChildren();
  // An <svg> has no `hidden` property: only the attribute hides it (with the CSS rule).
  $("roc").toggleAttribute("hidden", true);
  $("roc-zoom").hidden = true;
  $("roc-legend").hidden = true;
  $("operating-points").hidden = true;
  $("operating-points").querySelector("tbody").replaceChildren();
  $("roc-interval").textContent = "";
  $("roc-caption").textContent = "No calibration yet: upload one below.";
  resetGuarantee();
}

/** Show `view`'s active calibration, else its newest that succeeded, else nothing. */
export async function loadRoc(view) {
  const name = view.model.name;
  const signal = view.scope.signal;
  const { calibrations } = await getJson(`${modelPath(name)}/calibrations`, signal);
  live(view);
  // The active calibration, else the newest that succeeded, so a manual override keeps a curve.
  const shown = calibrations.find((c) => c.active) ??
    calibrations.find((c) => c.status === "succeeded");
  const calibration = shown
    ? await getJson(`${modelPath(name)}/calibrations/${shown.id}`, signal)
    : null;
  live(view);
  // A multi-class report holds one binary report per class: the chosen class's is shown.
  const whole = calibration?.report ?? null;
  view.report = view.className === null ? whole : whole?.classes?.[view.className] ?? null;
  resetRoc();
  if (!view.report) return;
  const report = view.report;
  showGuarantee(view.model, report, shown.active);
  const which = view.className === null ? "" : ` (class ${view.className})`;
  $("roc-caption").textContent =
    `${shown.active ? "Active" : "Latest"} calibration ${shown.id}${which}: ${report.strategy}, ` +
    `AUC ${formatNumber(report.auc)}, ${report.n_images} image(s).`;
  drawCurve();
  $("roc").toggleAttribute("hidden", false);
  $("roc-zoom").hidden = false;
  $("roc-legend").hidden = false;
  const interval = report.threshold_ci;
  $("roc-interval").textContent = interval
    ? `95 % bootstrap interval of the ${report.strategy} threshold: ` +
      `${formatNumber(interval[0])} – ${formatNumber(interval[1])} (thick part of the curve).`
    : "No bootstrap interval (it needs at least two images).";
  // The strategy's name is the button that moves the slider: one column less, so the table
  // fits a 390 px screen.
  const rows = Object.entries(report.operating_points).map(([strategy, point]) => {
    const row = document.createElement("tr");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = strategy;
    button.setAttribute("aria-label", `Use the ${strategy} threshold ${point.threshold}`);
    button.addEventListener("click", () => setThreshold(point.threshold));
    const first = document.createElement("td");
    first.appendChild(button);
    row.appendChild(first);
    for (const text of [formatNumber(point.threshold), point.tpr.toFixed(3),
      point.fpr.toFixed(3), point.f1.toFixed(3)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    return row;
  });
  $("operating-points").querySelector("tbody").replaceChildren(...rows);
  $("operating-points").hidden = false;
}

/** Draw the shown report's curve, whole or zoomed, with the slider's cut on it. */
function drawCurve() {
  const report = state.view.report;
  drawRoc($("roc"), report, state.zoomed, (_, point) => setThreshold(point.threshold));
  markCut($("roc"), report.roc, state.view.threshold);
  // The button says what it will do, not what is shown.
  $("roc-zoom").textContent = state.zoomed
    ? "Show the whole curve"
    : "Zoom onto the operating points";
}

/** Move the slider's marker on the curve. */
export function markRoc(threshold) {
  const report = state.view?.report;
  if (report) markCut($("roc"), report.roc, threshold);
}

/** Switch between the whole curve and the zoom onto the operating points. */
export function toggleZoom() {
  state.zoomed = !state.zoomed;
  if (state.view?.report) drawCurve();
}
