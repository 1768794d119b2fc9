// One sentence per term, where the numbers are: the "?" links beside a term jump to its entry
// in the glossary panel, which names the README section that says more.

export const TERMS = {
  tpr: ["TPR (recall)", "The share of the truly foreground pixels that the mask marks.",
    "The calibration report"],
  fpr: ["FPR", "The share of the truly background pixels that the mask marks by mistake.",
    "The calibration report"],
  precision: ["Precision", "The share of the marked pixels that are truly foreground.",
    "The calibration report"],
  f1: ["F1", "The harmonic mean of precision and recall over pixels, the same as Dice; 1 is a " +
    "perfect overlap.", "The calibration report"],
  dice: ["Dice", "Twice the overlap of mask and truth over their total size (pixel F1); 1 is " +
    "perfect, and both empty counts as 1.", "The calibration report"],
  iou: ["IoU", "The overlap of mask and truth divided by their union; always at most Dice.",
    "The calibration report"],
  youden: ["Youden's J", "TPR − FPR; the youden strategy takes the threshold where it is " +
    "largest.", "The calibration report"],
  auc: ["AUC", "The chance that a random foreground pixel scores above a random background " +
    "pixel: 1 is perfect ranking, 0.5 is guessing.", "The calibration report"],
  interval: ["95 % interval", "Where the chosen threshold would fall in 95 % of calibration " +
    "sets resampled from the same images; wide means few or disagreeing images.",
  "The calibration report"],
  psi: ["PSI (drift)", "The population stability index between the scores of recently served " +
    "images and those of the calibration set: under 0.1 is ok, 0.25 and over is an alert.",
  "Threshold health"],
  no_reference: ["no_reference", "Drift watching is off: with a default or manual threshold " +
    "there is no calibration set to compare served images with; activate a calibration to " +
    "turn it on.", "Threshold health"],
};

export const STRATEGY_HELP = {
  f1: "Takes the threshold with the best pixel F1 (Dice) on your calibration set.",
  youden: "Takes the threshold where TPR − FPR is largest.",
  closest: "Takes the threshold whose ROC point is nearest the perfect corner (FPR 0, TPR 1).",
  target_tpr: "Takes the lowest-FPR threshold that still finds the target share of foreground.",
  target_fpr: "Takes the highest-TPR threshold whose false-positive rate stays under the target.",
  target_precision: "Takes the highest-recall threshold whose precision reaches the target.",
  fnr_control: "Guaranteed: the expected share of foreground missed on a new image is at most " +
    "the target (alpha), by conformal risk control on your images.",
  fdr_control: "Guaranteed: the share of marked pixels that are wrong stays under the target " +
    "(alpha), with probability at least 1 − delta.",
  cost: "Takes the threshold with the lowest cost_fp × false positives + cost_fn × false " +
    "negatives; set the two costs below.",
};

/** The glossary entries, and a "?" link beside every `.help[data-term]` placeholder. */
export function installHelp() {
  const glossary = document.getElementById("glossary");
  for (const [key, [term, sentence, section]] of Object.entries(TERMS)) {
    const dt = document.createElement("dt");
    dt.id = `term-${key}`;
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = `${sentence} (README: “${section}”.)`;
    glossary.append(dt, dd);
  }
  for (const slot of document.querySelectorAll(".help[data-term]")) {
    const [term] = TERMS[slot.dataset.term];
    const link = document.createElement("a");
    link.href = `#term-${slot.dataset.term}`;
    link.className = "help-link";
    link.textContent = "?";
    link.setAttribute("aria-label", `What is ${term}?`);
    link.title = TERMS[slot.dataset.term][1];
    slot.replaceChildren(link);
  }
}
