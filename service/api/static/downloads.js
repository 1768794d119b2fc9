// Files the page hands to the user, named after the image, the model and the threshold.

import { state } from "./state.js";
import { formatNumber } from "./ui.js";

/** Hand `blob` to the browser as a download called `name`. */
export function saveBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

/** `cells-unet-sigmoid-t0.4791`: the image, the model and the threshold in one file name. */
export function downloadName(kind, threshold) {
  const model = state.view.model.name.replace(/[^\w.-]+/g, "_");
  const cut = threshold === undefined ? "" : `-t${formatNumber(threshold)}`;
  return `${state.input.name}-${model}${cut}-${kind}`;
}
