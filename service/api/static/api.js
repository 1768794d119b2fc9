// The service's HTTP API as the page uses it: every failure becomes a problem to show.

/** An RFC 9457 problem (title, detail) from the API, or one the page made for a failed request. */
export class ApiProblem extends Error {
  constructor(problem) {
    super(problem.title);
    this.problem = problem;
  }
}

// Held in memory only: a reload forgets it, so it never sits in the browser's storage.
let apiKey = null;

/** The problem in a failed response, or one made from its status when the body is not one. */
async function readProblem(response, method, path) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.title === "string") return body;
  } catch {
    // not JSON: fall through to a problem made from the status
  }
  return {
    title: `${response.status} ${response.statusText || "error"}`,
    detail: `${method} ${path} answered: ${text.slice(0, 300) || "(no body)"}`,
    status: response.status,
  };
}

/** Ask for the API key in the page's dialog; resolves to the key, or null when cancelled. */
function askForKey(problem) {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("api-key");
  document.getElementById("key-reason").textContent =
    `${problem.title}: ${problem.detail || "this action needs the service's API key"}`;
  input.value = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve(dialog.returnValue === "ok" && input.value.trim() ? input.value.trim() : null),
      { once: true },
    );
    dialog.showModal();
    input.focus();
  });
}

/**
 * Fetch `path`; a 4xx/5xx throws ApiProblem. A mutating call that gets 401 asks for the API key
 * and tries again with it.
 */
export async function call(
  path,
  { method = "GET", body, json, mutating = false, signal, actor } = {},
) {
  for (;;) {
    const headers = {};
    let payload = body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(json);
    }
    if (mutating && apiKey) headers.Authorization = `Bearer ${apiKey}`;
    if (mutating && actor) headers["X-Actor"] = actor; // who, for the threshold's history
    let response;
    try {
      response = await fetch(path, { method, body: payload, headers, signal });
    } catch (error) {
      if (error.name === "AbortError") throw error; // its view was left: not a failure to show
      throw new ApiProblem({
        title: "Service unreachable",
        detail: `${method} ${path} failed (${error.message}); is the service running?`,
      });
    }
    if (response.ok) return response;
    const problem = await readProblem(response, method, path);
    if (response.status === 401 && mutating) {
      const key = await askForKey(problem);
      if (key) {
        apiKey = key;
        continue;
      }
    }
    throw new ApiProblem(problem);
  }
}

/** GET `path` and parse its JSON body; `signal` aborts it. */
export async function getJson(path, signal) {
  return (await call(path, { signal })).json();
}

/** `/v1/models/{name}` with the name escaped for a URL. */
export function modelPath(name) {
  return `/v1/models/${encodeURIComponent(name)}`;
}
