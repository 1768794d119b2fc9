// Where the threshold is shown: the active calibration's guarantee (fnr_control, fdr_control)
// with the spread it does not cover, and its recalibration of the scores, if it fitted one.

import { $, fact, formatNumber } from "./ui.js";

const percent = (value) => `${(100 * value).toFixed(1)} %`;

/** Hide and empty both blocks. */
export function resetGuarantee() {
  $("guarantee").hidden = true;
  $("guarantee-facts").replaceChildren();
  $("guarantee-withdrawn").hidden = true;
  $("recalibration").hidden = true;
  $("recalibration-facts").replaceChildren();
}

/** Show `report`'s guarantee and recalibration when it is `model`'s active calibration's. */
export function showGuarantee(model, report, active) {
  resetGuarantee();
  if (!active || !report) return;
  const guarantee = report.guarantee;
  if (guarantee) {
    const spread = guarantee.per_image;
    const facts = [
      ["Risk controlled", guarantee.risk.toUpperCase()],
      ["alpha (the bound on the mean risk)", formatNumber(guarantee.alpha)],
      ["delta (the chance it fails)", guarantee.delta === null ? "– (a mean over images)"
        : formatNumber(guarantee.delta)],
      ["Calibration images", String(guarantee.n_images)],
      ["Risk on the calibration images", formatNumber(guarantee.calibration_risk)],
      ["Per image: median, 90th percentile", `${formatNumber(spread.median)}, ` +
        `${formatNumber(spread.p90)}`],
      [`Images with a risk above 2 alpha`, percent(spread.above_2alpha)],
      ["Images set apart", String(spread.n_excluded)],
    ];
    $("guarantee-policy").textContent = `Images set apart: ${guarantee.empty_policy}`;
    $("guarantee-statement").textContent = guarantee.statement;
    $("guarantee-facts").replaceChildren(...facts.flatMap(([term, value]) => fact(term, value)));
    const withdrawn = typeof model.guarantee === "string" && model.guarantee.startsWith("withdrawn");
    $("guarantee-withdrawn").hidden = !withdrawn;
    $("guarantee-withdrawn").textContent = withdrawn
      ? `Withdrawn: ${model.guarantee.replace(/^withdrawn\s*/, "").replace(/[()]/g, "")}. ` +
        "The served images no longer look like the calibration images, so the guarantee " +
        "no longer holds; recalibrate on recent images."
      : "";
    $("guarantee").hidden = false;
  }
  const recalibration = report.recalibration;
  if (recalibration) {
    const facts = [
      ["Method", recalibration.method],
      ["ECE (held-out pixels)", `${formatNumber(recalibration.ece_before)} → ` +
        `${formatNumber(recalibration.ece_after)}`],
      ["Brier score", `${formatNumber(recalibration.brier_before)} → ` +
        `${formatNumber(recalibration.brier_after)}`],
      ["Fitted on / checked on", `${recalibration.n_fit_images} / ` +
        `${recalibration.n_heldout_images} images`],
    ];
    $("recalibration-facts").replaceChildren(
      ...facts.flatMap(([term, value]) => fact(term, value)));
    $("recalibration").hidden = false;
  }
}
