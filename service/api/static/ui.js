// What every part of the page shares: element lookup, the problem banner, number formatting.

import { ApiProblem } from "./api.js";

export const $ = (id) => document.getElementById(id);

/** Show an RFC 9457 problem's title and detail in the banner. */
export function showProblem(problem) {
  $("problem-title").textContent = problem.title || "Error";
  $("problem-detail").textContent = problem.detail || "";
  $("problem").hidden = false;
}

/** Hide the problem banner. */
export function clearProblem() {
  $("problem").hidden = true;
}

/** Whether `error` is a request or step given up because its view was left. */
export function isStale(error) {
  return error?.name === "AbortError";
}

/** Run an action; a failure is shown as the problem's title and detail, never thrown. */
export function guarded(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      if (isStale(error)) return; // the user moved on: nothing of that view may be shown
      const problem = error instanceof ApiProblem
        ? error.problem
        : { title: "Something went wrong in the page", detail: String(error?.message || error) };
      showProblem(problem);
    }
  };
}

/** Four significant digits without trailing zeros: 1.05, not 1.050. */
export function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return String(Number(Number(value).toPrecision(4)));
}

/** A rate in [0, 1] to three decimals, "–" where it is undefined. */
export function formatRate(value) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(3);
}

/** A definition-list pair. */
export function fact(term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  return [dt, dd];
}
