// The page's one source of truth. Everything that belongs to the chosen model lives in one model
// view; everything computed from one image for that model lives in its image, inside the view.
// Choosing another model or image ends the old one: its AbortController cancels the requests it
// still has in flight, and `live()` stops any step of it that resumes after an await.

export const state = {
  models: [], // ModelInfo of every served model
  view: null, // the model view, see newModelView
  input: null, // what the user chose, kept across a model switch: {file, name, truth}
  zoomed: true, // the ROC curve zoomed onto its operating points
};

/** Start the view of `model`, ending the previous one (its requests are aborted). */
export function newModelView(model) {
  state.view?.scope.abort();
  const classes = model.classes ?? [];
  const className = classes.length ? classes[0] : null;
  state.view = {
    model,
    scope: new AbortController(),
    className, // the chosen class of a multi-class model; null for a binary one
    // The slider's cut of every class (one class is on the slider at a time).
    cuts: Object.fromEntries(classes.map((c) => [c, model.class_thresholds?.[c]?.value ?? 0.5])),
    threshold: 0.5, // the exact cut (the slider snaps, this does not), set below
    moves: 0, // the user's moves of the slider or the number box, counted
    report: null, // the calibration report whose ROC curve is drawn
    calibration: null, // the calibration job in the calibration panel
    history: null, // the threshold changes, newest first, once asked for
    image: null, // see newImage
  };
  state.view.threshold = activeThreshold(state.view)?.value ?? 0.5;
  return state.view;
}

/** The threshold in force for `view`'s chosen class (the model's one for a binary model). */
export function activeThreshold(view) {
  if (view.className === null) return view.model.threshold;
  return view.model.class_thresholds?.[view.className] ?? null;
}

/** `?class=name` for a multi-class view, else "" (`joiner` "&" to add it to a query). */
export function classQuery(view, joiner = "?") {
  return view.className === null ? "" : `${joiner}class=${encodeURIComponent(view.className)}`;
}

/** Start a run of the chosen image through `view`'s model, ending the previous run. */
export function newImage(view) {
  view.image?.scope.abort();
  const scope = new AbortController();
  view.scope.signal.addEventListener("abort", () => scope.abort(), { once: true });
  view.image = { scope, probabilities: null, bitmap: null };
  return view.image;
}

/** Throw AbortError when `owner` (a view or an image) has been left. */
export function live(owner) {
  if (owner.scope.signal.aborted) throw new DOMException("the view was left", "AbortError");
}
