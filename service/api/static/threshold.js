// The threshold: a slider over the head's range (or the map's, for an unbounded side), an exact
// number box checked against the head's range as the user types, and the listeners that redraw
// whatever depends on the cut.

import { activeThreshold, state } from "./state.js";
import { $, formatNumber } from "./ui.js";

// The slider is a position in SLIDER_STEPS steps over the range; the threshold is kept exact,
// so the range's ends and a chosen operating point are the very values, not rounded ones.
const SLIDER_STEPS = 1000;
const listeners = [];

/** Call `listener(value)` whenever the threshold changes. */
export function onThreshold(listener) {
  listeners.push(listener);
}

/** The slider's range: the head's bounds, else the map's (and the active threshold's). */
export function bounds() {
  const view = state.view;
  const [low, high] = view?.model.output_range ?? [0, 1];
  const [mapLow, mapHigh] = view?.image?.probabilities?.range ?? [0, 1];
  const active = (view && activeThreshold(view)?.value) ?? 0.5;
  const lower = low ?? Math.min(mapLow, active);
  const upper = high ?? Math.max(mapHigh, active, lower + 1e-6);
  return [lower, upper];
}

/** The threshold at slider position `position`. */
export function thresholdAt(position) {
  const [low, high] = bounds();
  if (position >= SLIDER_STEPS) return high;
  return position <= 0 ? low : low + ((high - low) * position) / SLIDER_STEPS;
}

function positionOf(threshold) {
  const [low, high] = bounds();
  const position = Math.round(((threshold - low) / (high - low)) * SLIDER_STEPS);
  return Math.min(SLIDER_STEPS, Math.max(0, position));
}

/** Fit the slider, its end labels and the number box to the current range. */
export function setSliderRange() {
  const [low, high] = bounds();
  const slider = $("threshold-slider");
  slider.min = "0";
  slider.max = String(SLIDER_STEPS);
  slider.step = "1";
  slider.dataset.low = String(low);
  slider.dataset.high = String(high);
  $("slider-low").textContent = formatNumber(low);
  $("slider-high").textContent = formatNumber(high);
  const [headLow, headHigh] = state.view?.model.output_range ?? [null, null];
  const box = $("threshold-number");
  box.min = headLow === null ? "" : String(headLow);
  box.max = headHigh === null ? "" : String(headHigh);
  slider.value = String(positionOf(state.view?.threshold ?? 0.5));
}

/** Why `value` is no threshold for the chosen head, or "" when it is one. */
export function thresholdError(value) {
  if (!Number.isFinite(value)) return "Type a number.";
  const model = state.view?.model;
  const [low, high] = model?.output_range ?? [null, null];
  const head = model?.architecture?.head ?? "this";
  const range = `[${low ?? "−∞"}, ${high ?? "∞"}]`;
  if ((low !== null && value < low) || (high !== null && value > high)) {
    return `The ${head} head's scores lie in ${range}: ${value} is outside, so it would ` +
      "mark every pixel or none.";
  }
  return "";
}

/** Make `value` the slider's threshold; `from` is the control that set it, left as typed. */
export function setThreshold(value, { from = null } = {}) {
  const view = state.view;
  if (!view) return;
  view.threshold = value;
  if (view.className !== null) view.cuts[view.className] = value;
  const slider = $("threshold-slider");
  if (from !== "slider") slider.value = String(positionOf(value));
  slider.setAttribute("aria-valuetext", formatNumber(value));
  $("threshold-value").textContent = formatNumber(value);
  $("threshold-exact").textContent = String(value);
  if (from !== "number") {
    $("threshold-number").value = formatNumber(value); // the full value: "Full precision"
    showError("");
  }
  offerSetManual();
  for (const listener of listeners) listener(value);
}

/** Offer "make active" while the slider's threshold is not the one in force. */
export function offerSetManual() {
  const view = state.view;
  const active = activeThreshold(view)?.value;
  $("set-manual").disabled = view.threshold === active || view.model.available === false;
}

function showError(message) {
  const box = $("threshold-number");
  $("threshold-error").textContent = message;
  box.setCustomValidity(message);
  if (message) box.setAttribute("aria-invalid", "true");
  else box.removeAttribute("aria-invalid");
}

/** Wire the slider and the number box. */
export function wireThreshold() {
  $("threshold-slider").addEventListener("input", (e) => {
    if (state.view) state.view.moves += 1;
    setThreshold(thresholdAt(e.target.valueAsNumber), { from: "slider" });
  });
  $("threshold-number").addEventListener("input", (e) => {
    if (state.view) state.view.moves += 1;
    const value = e.target.value.trim() === "" ? NaN : Number(e.target.value);
    const message = thresholdError(value);
    showError(message);
    if (message) {
      $("set-manual").disabled = true; // never offer to make a refused value active
      return;
    }
    setThreshold(value, { from: "number" });
  });
}
