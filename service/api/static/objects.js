// Objects: the connected parts of the mask at the slider's threshold, counted by the service
// (/instances), their outlines drawn over the image, and the three files to download. A
// multi-class model's objects are the chosen class's.

import { call, modelPath } from "./api.js";
import { downloadName, saveBlob } from "./downloads.js";
import { activeThreshold, live, state } from "./state.js";
import { $, clearProblem, formatNumber, guarded } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const FORMATS = {
  geojson: { kind: "objects", extension: "geojson" },
  csv: { kind: "objects", extension: "csv" },
  labels: { kind: "labels", extension: "png" },
};

/** The query of an /instances request at the slider's threshold, in `format`. */
function query(view, format) {
  const params = new URLSearchParams({ format });
  if (view.className !== null) params.set("class", view.className);
  // The active threshold is left to the service: then it can answer with the count's range.
  if (view.threshold !== activeThreshold(view)?.value) {
    params.set("threshold", String(view.threshold));
  }
  return `${modelPath(view.model.name)}/instances?${params}`;
}

async function fetchObjects(view, format) {
  const form = new FormData();
  form.append("image", state.input.file);
  return call(query(view, format), { method: "POST", body: form, signal: view.image.scope.signal });
}

/** SVG path data of a GeoJSON Polygon or MultiPolygon, in pixel coordinates. */
function pathData(geometry) {
  const polygons = geometry.type === "MultiPolygon" ? geometry.coordinates : [geometry.coordinates];
  return polygons.flat()
    .map((ring) => `M${ring.map(([x, y]) => `${x},${y}`).join("L")}Z`)
    .join("");
}

/** Remove the outlines and the count: they belong to another threshold or image. */
export function resetObjects() {
  $("outlines").replaceChildren();
  $("outlines").toggleAttribute("hidden", true);
  $("object-count").textContent = "";
  delete $("object-count").dataset.count;
  for (const format of Object.keys(FORMATS)) $(`download-${format}`).disabled = true;
}

/** Show the objects panel once the view has an image to count them in. */
export function showObjects(view) {
  resetObjects();
  const ready = Boolean(view.image?.probabilities);
  $("objects").hidden = !ready;
  $("count-objects").disabled = !ready;
  $("count-objects").textContent =
    view.className === null ? "Count objects" : `Count ${view.className} objects`;
}

/** What the count is of: "object(s)", or a multi-class model's "nucleus object(s)". */
function countedThings(view, threshold) {
  if (view.className === null) return `object(s) at threshold ${formatNumber(threshold)}`;
  const things = `${view.className} object(s) at threshold ${formatNumber(threshold)}`;
  // A request's threshold cuts every class; the decision rule then weighs them all at it.
  const cutsAll = view.model.mode === "multiclass" && threshold !== activeThreshold(view)?.value;
  return cutsAll ? `${things} (every class cut at ${formatNumber(threshold)})` : things;
}

async function countObjects() {
  clearProblem();
  const view = state.view;
  const image = view.image;
  const threshold = view.threshold;
  resetObjects();
  $("object-count").textContent = "Counting…";
  const response = await fetchObjects(view, "geojson");
  const collection = await response.json();
  live(image);
  if (view.threshold !== threshold) return; // the slider moved on meanwhile
  const count = Number(response.headers.get("X-Object-Count"));
  let range = null;
  if (threshold === activeThreshold(view)?.value) {
    const table = await (await fetchObjects(view, "json")).json();
    live(image);
    range = table.count_range;
  }
  const { width, height } = image.probabilities;
  const svg = $("outlines");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren(...collection.features.map((feature) => {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", pathData(feature.geometry));
    return path;
  }));
  svg.toggleAttribute("hidden", false);
  const [low, high] = range ? [...range.counts].sort((x, y) => x - y) : [];
  const interval = range
    ? `; ${low} – ${high} over calibration ${range.calibration_id}'s threshold interval ` +
      `${formatNumber(range.thresholds[0])} – ${formatNumber(range.thresholds[1])}`
    : "";
  $("object-count").dataset.count = String(count);
  $("object-count").textContent = `${count} ${countedThings(view, threshold)}${interval}.`;
  for (const format of Object.keys(FORMATS)) $(`download-${format}`).disabled = false;
}

async function download(format) {
  clearProblem();
  const view = state.view;
  const threshold = view.threshold;
  const response = await fetchObjects(view, format);
  const blob = await response.blob();
  live(view.image);
  const { kind, extension } = FORMATS[format];
  const named = view.className === null ? kind : `${view.className}-${kind}`;
  saveBlob(blob, `${downloadName(named, threshold)}.${extension}`);
}

/** Wire the count button and the downloads; a move of the slider clears the outlines. */
export function wireObjects(onThreshold) {
  $("count-objects").addEventListener("click", guarded(countObjects));
  for (const format of Object.keys(FORMATS)) {
    $(`download-${format}`).addEventListener("click", guarded(() => download(format)));
  }
  onThreshold(() => {
    if ($("object-count").dataset.count !== undefined) resetObjects();
  });
}
