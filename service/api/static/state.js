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
  state.view = {
    model,
    scope: new AbortController(),
    threshold: model.threshold?.value ?? 0.5, // the exact cut (the slider snaps, this does not)
    report: null, // the calibration report whose ROC curve is drawn
    calibration: null, // the calibration job in the calibration panel
    history: null, // the threshold changes, newest first, once asked for
    image: null, // see newImage
  };
  return state.view;
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
