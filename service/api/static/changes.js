// Changes to the live service's threshold: each one behind a confirmation that shows the old and
// the new threshold and what else changes (drift watching), and the history panel that shows
// every change (when, who, from, to, why) with "restore this" and "back to the default".

import { call, getJson, modelPath } from "./api.js";
import { activeThreshold, classQuery, live, state } from "./state.js";
import { $, clearProblem, formatNumber, guarded } from "./ui.js";

const callbacks = { changed: async () => {} };

function describe(value, source, calibrationId) {
  const from = calibrationId ? `${source} ${calibrationId}` : source;
  return `${formatNumber(value)} (${from})`;
}

function driftConsequence(model, source, calibrationId) {
  const before = model.threshold?.source;
  if (source === "calibration") {
    const which = calibrationId ? `calibration ${calibrationId}'s` : "the new calibration's";
    return `Drift is then measured against ${which} images, in a new window; every client ` +
      "gets masks at the new threshold from its next request.";
  }
  const off = before === "calibration" ? "stops" : "stays off";
  return `Drift watching ${off} (no_reference): a ${source} threshold has no calibration set ` +
    "to compare served images with, until a calibration is activated. Every client gets masks " +
    "at the new threshold from its next request.";
}

/** Ask the user to confirm a change of `model`'s threshold; resolves true when they do. */
export function confirmChange(model, { value, source, calibrationId = null, classValues = null }) {
  const dialog = $("confirm-dialog");
  const view = state.view;
  const now = (view?.model === model ? activeThreshold(view) : model.threshold) ?? {};
  $("confirm-model").textContent = view?.model === model && view.className !== null
    ? `${model.name}, class ${view.className}` : model.name;
  $("confirm-old").textContent = describe(now.value, now.source, now.calibration_id);
  $("confirm-new").textContent = classValues
    ? `${Object.entries(classValues).map(([name, v]) => `${name} ${formatNumber(v)}`).join(", ")}` +
      ` (${calibrationId ? `${source} ${calibrationId}` : source})`
    : value === undefined
      ? `${source} (its threshold, once the job succeeds)`
      : describe(value, source, calibrationId);
  $("confirm-what").textContent = driftConsequence(model, source, calibrationId);
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    $("confirm-cancel").focus(); // the safe choice has the focus
  });
}

function actor() {
  return $("actor").value.trim() || undefined;
}

/** Confirm, then send one change; the page then shows the threshold the service answered. */
async function change(view, target, request) {
  clearProblem();
  if (!(await confirmChange(view.model, target))) return;
  live(view);
  const moves = view.moves; // a move after this one is the user's, not to be undone
  const response = await call(request.path, {
    method: request.method, json: request.json, mutating: true, actor: actor(),
  });
  await callbacks.changed(view, await response.json(), moves);
}

/** Make the slider's threshold the active one (source manual). */
export async function setManual() {
  const view = state.view;
  await change(view, { value: view.threshold, source: "manual" }, {
    path: `${modelPath(view.model.name)}/threshold${classQuery(view)}`,
    method: "PUT",
    json: { value: view.threshold },
  });
}

/** Go back to the checkpoint's own threshold. */
export async function resetToDefault() {
  const view = state.view;
  const value = view.className === null ? view.model.default_threshold : null;
  await change(view, { value, source: "default" }, {
    path: `${modelPath(view.model.name)}/threshold${classQuery(view)}`, method: "DELETE",
  });
}

/** Activate calibration `id` (threshold `value`; a multi-class one's `classValues`, every
 * class's threshold by name); `force` passes a blocking warning. */
export async function activateCalibration(id, value, force, classValues = null) {
  const view = state.view;
  const query = force ? "?force=true" : "";
  await change(view, { value, source: "calibration", calibrationId: id, classValues }, {
    path: `${modelPath(view.model.name)}/calibrations/${id}/activate${query}`, method: "POST",
  });
}

/** Bring back the threshold of history entry `entry`, the way it was made. */
async function restore(entry) {
  if (entry.source === "default") return resetToDefault();
  if (entry.source === "calibration" && entry.calibration_id) {
    // Re-activating the calibration keeps its drift reference; a bare value would not.
    return activateCalibration(entry.calibration_id, entry.value, $("force").checked);
  }
  const view = state.view;
  return change(view, { value: entry.value, source: "manual" }, {
    path: `${modelPath(view.model.name)}/threshold${classQuery(view)}`,
    method: "PUT",
    json: { value: entry.value },
  });
}

function historyItem(entry, view) {
  const model = view.model;
  const item = document.createElement("li");
  const when = document.createElement("time");
  when.dateTime = entry.at;
  when.textContent = new Date(entry.at).toLocaleString();
  const what = document.createElement("p");
  what.textContent =
    `${entry.actor ? entry.actor : "someone unnamed"}: from ` +
    `${describe(entry.previous_value, entry.previous_source, null)} to ` +
    `${describe(entry.value, entry.source, entry.calibration_id)}` +
    (entry.reason ? `, because ${entry.reason}` : "");
  item.append(when, what);
  const current = activeThreshold(view) ?? {};
  const inForce = entry.value === current.value && entry.source === current.source &&
    (entry.calibration_id ?? null) === (current.calibration_id ?? null);
  if (entry.value !== null && entry.digest === model.digest && !inForce) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "change";
    button.textContent = "Restore this…";
    button.setAttribute("aria-label",
      `Restore ${describe(entry.value, entry.source, entry.calibration_id)}`);
    button.addEventListener("click", guarded(() => restore(entry)));
    item.append(button);
  }
  return item;
}

/** Fetch and list `view`'s threshold changes, when the history panel is open. */
export async function loadHistory(view) {
  if ($("history").hidden) return;
  const { changes } = await getJson(
    `${modelPath(view.model.name)}/threshold/history?limit=50${classQuery(view, "&")}`, view.scope.signal);
  live(view);
  view.history = changes;
  $("history-list").replaceChildren(...changes.map((entry) => historyItem(entry, view)));
  $("history-empty").hidden = changes.length > 0;
  $("reset-default").disabled = activeThreshold(view)?.source === "default";
}

/** Empty the history panel (another model's changes must never show). */
export function resetHistory() {
  $("history-list").replaceChildren();
  $("history-empty").hidden = true;
}

/** Wire the panel; `changed(view, threshold, moves)` runs after every acknowledged change
 * (`moves`: the view's count of the user's slider moves when the change was sent). */
export function wireChanges(changed) {
  callbacks.changed = changed;
  $("history-toggle").addEventListener("click", guarded(async () => {
    const open = $("history").hidden;
    $("history").hidden = !open;
    $("history-toggle").setAttribute("aria-expanded", String(open));
    $("history-toggle").textContent = open ? "Hide the history" : "Show the history";
    if (open && state.view) await loadHistory(state.view);
  }));
  $("reset-default").addEventListener("click", guarded(resetToDefault));
  $("set-manual").addEventListener("click", guarded(setManual));
}
