// The ROC curve of a calibration report as SVG: the curve, the bootstrap interval of the chosen
// threshold, every operating point (focusable, so a keyboard can pick one) and the slider's cut.

const SVG = "http://www.w3.org/2000/svg";
const SIZE = { left: 44, top: 10, width: 286, height: 266 };

function element(name, attributes, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  parent.appendChild(node);
  return node;
}

const NICE_FPR = [0.02, 0.05, 0.1, 0.2, 0.5, 1];

/** The part of ROC space shown: the whole unit square, or a zoom onto the operating points. */
export function zoomOnto(points) {
  const fpr = Math.max(...points.map((p) => p.fpr));
  const tpr = Math.min(...points.map((p) => p.tpr));
  // Round numbers for the axes' ends, with room around the points.
  const xMax = NICE_FPR.find((end) => end >= 1.5 * fpr) ?? 1;
  const yMin = Math.min(0.9, Math.max(0, Math.floor(10 * (tpr - 0.5 * (1 - tpr))) / 10));
  return { xMax, yMin };
}

const WHOLE = { xMax: 1, yMin: 0 };

function scales(view) {
  return {
    x: (fpr) => SIZE.left + (fpr / view.xMax) * SIZE.width,
    y: (tpr) => SIZE.top + (1 - (tpr - view.yMin) / (1 - view.yMin)) * SIZE.height,
  };
}

function polyline(scale, fpr, tpr, indices, className, parent) {
  const points = indices.map((i) => `${scale.x(fpr[i]).toFixed(1)},${scale.y(tpr[i]).toFixed(1)}`);
  return element("polyline", { points: points.join(" "), class: className }, parent);
}

function tickText(value) {
  return String(Number(value.toPrecision(2)));
}

function axes(svg, view, scale) {
  const { x, y } = scale;
  element("rect", { x: SIZE.left, y: SIZE.top, width: SIZE.width, height: SIZE.height,
    class: "frame" }, svg);
  const clip = element("clipPath", { id: "roc-clip" }, svg);
  element("rect", { x: SIZE.left, y: SIZE.top, width: SIZE.width, height: SIZE.height }, clip);
  const plot = element("g", { "clip-path": "url(#roc-clip)" }, svg);
  element("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "chance" }, plot);
  for (const step of [0, 0.5, 1]) {
    const fpr = step * view.xMax;
    const tpr = view.yMin + step * (1 - view.yMin);
    element("text", { x: x(fpr), y: y(view.yMin) + 16, class: "tick", "text-anchor": "middle" },
      svg).textContent = tickText(fpr);
    element("text", { x: x(0) - 6, y: y(tpr) + 4, class: "tick", "text-anchor": "end" }, svg)
      .textContent = tickText(tpr);
  }
  const middle = y(view.yMin + (1 - view.yMin) / 2);
  element("text", { x: x(view.xMax / 2), y: y(view.yMin) + 34, class: "label",
    "text-anchor": "middle" }, svg).textContent = "false positive rate";
  element("text", { x: 12, y: middle, class: "label", "text-anchor": "middle",
    transform: `rotate(-90 12 ${middle})` }, svg).textContent = "true positive rate";
  return plot;
}

/** The ROC index whose cut equals "score >= threshold": the lowest ROC threshold above it. */
export function rocIndexAt(roc, threshold) {
  // ROC thresholds fall from the first point to the last.
  let found = 0;
  roc.thresholds.forEach((value, i) => {
    if (value !== null && value >= threshold) found = i;
  });
  return found;
}

/**
 * Draw `report`'s ROC curve into `svg`, whole or zoomed onto its operating points;
 * `onPick(name, point)` runs when a point is chosen.
 */
export function drawRoc(svg, report, zoomed, onPick) {
  svg.replaceChildren();
  const { fpr, tpr, thresholds } = report.roc;
  const view = zoomed ? zoomOnto(Object.values(report.operating_points)) : WHOLE;
  const scale = scales(view);
  svg.dataset.xMax = view.xMax;
  svg.dataset.yMin = view.yMin;
  const plot = axes(svg, view, scale);
  polyline(scale, fpr, tpr, fpr.map((_, i) => i), "curve", plot);
  const interval = report.threshold_ci;
  if (interval) {
    const inside = thresholds
      .map((value, i) => [value, i])
      .filter(([value]) => value !== null && value >= interval[0] && value <= interval[1])
      .map(([, i]) => i);
    if (inside.length) polyline(scale, fpr, tpr, inside, "interval", plot);
  }
  element("circle", { r: 5, class: "cut", id: "roc-cut", cx: scale.x(0), cy: scale.y(0) }, svg);
  for (const [name, point] of Object.entries(report.operating_points)) {
    if (!Number.isFinite(point.threshold)) continue; // nothing to move the slider to
    const chosen = name === report.strategy;
    const dot = element("circle", {
      cx: scale.x(point.fpr), cy: scale.y(point.tpr), r: chosen ? 7 : 5,
      class: `point ${name === "fixed_0.5" ? "fixed" : "strategy"}${chosen ? " chosen" : ""}`,
      tabindex: 0, role: "button", "data-strategy": name,
      "aria-label": `${name}: threshold ${point.threshold.toPrecision(4)}, ` +
        `TPR ${point.tpr.toFixed(3)}, FPR ${point.fpr.toFixed(3)}; move the slider here`,
    }, svg);
    element("title", {}, dot).textContent = `${name} (threshold ${point.threshold.toPrecision(4)})`;
    dot.addEventListener("click", () => onPick(name, point));
    dot.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        onPick(name, point);
      }
    });
  }
}

/** Move the marker of the slider's cut to where `threshold` lies on the curve. */
export function markCut(svg, roc, threshold) {
  const cut = svg.querySelector("#roc-cut");
  if (!cut) return;
  const scale = scales({ xMax: Number(svg.dataset.xMax), yMin: Number(svg.dataset.yMin) });
  const i = rocIndexAt(roc, threshold);
  // A cut outside the zoomed axes sits on their edge, hollow, rather than vanish past them.
  const x = scale.x(roc.fpr[i]);
  const y = scale.y(roc.tpr[i]);
  const cx = Math.min(SIZE.left + SIZE.width, Math.max(SIZE.left, x));
  const cy = Math.min(SIZE.top + SIZE.height, Math.max(SIZE.top, y));
  cut.setAttribute("cx", cx);
  cut.setAttribute("cy", cy);
  cut.classList.toggle("outside", cx !== x || cy !== y);
}
