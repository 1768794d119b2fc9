// The image and its mask at a threshold, drawn from the float map in the browser; with a
// ground-truth mask the errors are coloured and scored (Dice, IoU, precision, recall).

import { classColour, labelsOf } from "./classes.js";
import { activeThreshold, state } from "./state.js";
import { $, formatRate } from "./ui.js";

// Little-endian RGBA words, drawn opaque; the opacity control fades the whole layer.
const rgba = (r, g, b) => ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
const MASK = rgba(255, 0, 110); // foreground, when there is no ground truth
const TP = rgba(255, 0, 110); // found: the mask's own colour
const FP = rgba(230, 159, 0); // orange: marked, but background in the truth
const FN = rgba(86, 180, 233); // sky blue: foreground in the truth, missed

function sizeCanvas(canvas, width, height) {
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
}

/** Pixel counts and scores of the cut `score >= cut` against `truth` (0/1 bytes), if any. */
export function evaluate(data, truth, cut) {
  let tp = 0;
  let fp = 0;
  let fn = 0;
  let marked = 0;
  for (let i = 0; i < data.length; i += 1) {
    const on = data[i] >= cut;
    if (on) marked += 1;
    if (truth) {
      if (on && truth[i]) tp += 1;
      else if (on) fp += 1;
      else if (truth[i]) fn += 1;
    }
  }
  const ratio = (a, b) => (b > 0 ? a / b : null);
  // Both empty is full agreement: Dice and IoU 1, as the model has nothing to find or miss.
  const errors = tp + fp + fn;
  return {
    marked,
    foreground: marked / data.length,
    tp, fp, fn,
    dice: truth ? (errors ? (2 * tp) / (2 * tp + fp + fn) : 1) : null,
    iou: truth ? (errors ? tp / errors : 1) : null,
    precision: truth ? ratio(tp, tp + fp) : null,
    recall: truth ? ratio(tp, tp + fn) : null,
  };
}

/** Draw the image (or the map, on demand) into `canvas`. */
function drawBackground(canvas, image) {
  const probs = image.probabilities;
  sizeCanvas(canvas, probs.width, probs.height);
  const context = canvas.getContext("2d");
  if (image.bitmap && !$("show-probabilities").checked) {
    context.drawImage(image.bitmap, 0, 0, probs.width, probs.height);
    return;
  }
  // The probability map as grey levels, stretched over its own range.
  const [low, high] = probs.range;
  const scale = high > low ? 255 / (high - low) : 0;
  const pixels = context.createImageData(probs.width, probs.height);
  const words = new Uint32Array(pixels.data.buffer);
  for (let i = 0; i < probs.data.length; i += 1) {
    const grey = Math.round((probs.data[i] - low) * scale);
    words[i] = 0xff000000 | (grey << 16) | (grey << 8) | grey;
  }
  context.putImageData(pixels, 0, 0);
}

/**
 * What the cut marks: {data, cut} to compare as `data >= cut` for a binary model; for a model
 * with classes, the chosen class's pixels as 0/1 (cut 1) and every pixel's label.
 */
function cutOf(view, probs, cuts) {
  if (view.className === null) return { data: probs.data, cut: cuts, labels: null };
  const classes = view.model.classes;
  const chosen = classes.indexOf(view.className);
  const labels = labelsOf(probs.maps, classes.map((c) => cuts[c]), view.model.mode, chosen);
  const on = new Uint8Array(labels.length);
  for (let i = 0; i < on.length; i += 1) on[i] = labels[i] === chosen + 1 ? 1 : 0;
  return { data: on, cut: 1, labels };
}

function drawCut(canvas, probs, truth, { data, cut, labels }) {
  sizeCanvas(canvas, probs.width, probs.height);
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(probs.width, probs.height);
  const words = new Uint32Array(pixels.data.buffer);
  const colours = labels ? state.view.model.classes.map((_, k) => rgba(...classColour(k))) : [];
  for (let i = 0; i < data.length; i += 1) {
    const on = data[i] >= cut;
    if (!truth) {
      if (labels) {
        if (labels[i]) words[i] = colours[labels[i] - 1];
      } else if (on) words[i] = MASK;
    } else if (on) {
      words[i] = truth[i] ? TP : FP;
    } else if (truth[i]) {
      words[i] = FN;
    }
  }
  context.putImageData(pixels, 0, 0);
}

/** The ground truth of the chosen image, when it matches the map's size. */
function truthOf(image) {
  const truth = state.input?.truth;
  const probs = image.probabilities;
  return truth && truth.width === probs.width && truth.height === probs.height ? truth.bits : null;
}

function showScores(scores, suffix) {
  const cell = (name) => $(`eval-${suffix}${name}`);
  for (const name of ["dice", "iou", "precision", "recall"]) {
    cell(name).textContent = formatRate(scores[name]);
    cell(name).dataset.value = String(scores[name]);
  }
  cell("foreground").textContent = `${(100 * scores.foreground).toFixed(2)} %`;
}

/** Redraw everything that depends on the image: both backgrounds, then the masks. */
export function drawImage() {
  const image = state.view?.image;
  if (!image?.probabilities) return;
  drawBackground($("image-canvas"), image);
  if ($("show-active").checked) drawBackground($("active-image-canvas"), image);
  drawMasks();
}

let frame = 0;

/** Redraw the masks, the foreground count and the scores, once per animation frame. */
export function drawMasks() {
  cancelAnimationFrame(frame);
  frame = requestAnimationFrame(() => {
    const view = state.view;
    const image = view?.image;
    if (!image?.probabilities) return;
    const probs = image.probabilities;
    const truth = truthOf(image);
    const slider = cutOf(view, probs, view.className === null ? view.threshold : view.cuts);
    drawCut($("mask-canvas"), probs, truth, slider);
    const scores = evaluate(slider.data, truth, slider.cut);
    $("foreground-fraction").textContent = `${(100 * scores.foreground).toFixed(2)} % ` +
      `(${scores.marked} of ${probs.data.length} pixels)`;
    $("overlay-legend").hidden = !truth;
    $("evaluation").hidden = !truth;
    const active = cutOf(view, probs, view.className === null
      ? activeThreshold(view)?.value ?? 0.5
      : Object.fromEntries(view.model.classes.map((c) => [c, view.model.class_thresholds[c].value])));
    const compare = $("show-active").checked;
    $("active-figure").hidden = !compare;
    $("compare").classList.toggle("side-by-side", compare);
    if (compare) drawCut($("active-mask-canvas"), probs, truth, active);
    if (truth) {
      showScores(scores, "");
      showScores(evaluate(active.data, truth, active.cut), "active-");
    }
  });
}

/** Read a ground-truth mask file: any non-zero colour is foreground. */
export async function readTruth(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch {
    throw new Error(`${file.name}: the browser cannot read it as an image; use an 8-bit PNG`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  const bits = new Uint8Array(bitmap.width * bitmap.height);
  for (let i = 0; i < bits.length; i += 1) {
    bits[i] = data[4 * i] || data[4 * i + 1] || data[4 * i + 2] ? 1 : 0;
  }
  return { width: bitmap.width, height: bitmap.height, bits, name: file.name };
}
