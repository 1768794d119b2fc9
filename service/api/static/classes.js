// Models with several classes: the class picker, one colour per class, and the labels the
// service's rule gives from the K maps and one threshold per class.

import { $ } from "./ui.js";

// Colour-blind-safe (Okabe–Ito) after the binary mask's own colour, one per class in order.
export const CLASS_COLOURS = [
  [255, 0, 110], [0, 114, 178], [0, 158, 115], [213, 94, 0], [204, 121, 167], [240, 228, 66],
];

/** The colour of class number `index` (0-based), cycling when there are more classes. */
export function classColour(index) {
  return CLASS_COLOURS[index % CLASS_COLOURS.length];
}

/**
 * Labels (0 background, k + 1 class k) from the maps and one cut per class. Multiclass (the
 * service's rule): class k where p_k >= t_k and p_k is the largest of the passing classes, the
 * first on a tie. Multilabel: each class where its own map passes; where several do, the chosen
 * class `chosen` is shown, else the first that passes.
 */
export function labelsOf(maps, cuts, mode, chosen) {
  const size = maps[0].length;
  const labels = new Uint8Array(size);
  const k = maps.length;
  for (let i = 0; i < size; i += 1) {
    let best = -1;
    let bestScore = -Infinity;
    for (let c = 0; c < k; c += 1) {
      const p = maps[c][i];
      if (p < cuts[c]) continue;
      if (mode === "multilabel") {
        if (best < 0 || c === chosen) best = c;
        if (c === chosen) break;
      } else if (p > bestScore) {
        best = c;
        bestScore = p;
      }
    }
    labels[i] = best + 1;
  }
  return labels;
}

/** Show the picker and the colour key for `model`'s classes; both hidden for a binary model. */
export function showClasses(model, chosen) {
  const classes = model.classes ?? [];
  const several = classes.length > 1;
  $("class-field").hidden = !several;
  $("class-legend").hidden = classes.length === 0;
  $("class-select").replaceChildren(...classes.map((c) => new Option(c, c)));
  if (chosen !== null) $("class-select").value = chosen;
  const keys = classes.flatMap((name, index) => {
    const key = document.createElement("span");
    key.className = "key";
    key.dataset.class = name;
    key.dataset.rgb = classColour(index).join(",");
    key.style.background = `rgb(${key.dataset.rgb})`;
    return [key, document.createTextNode(` ${name} `)];
  });
  $("class-legend").replaceChildren(...keys);
}
