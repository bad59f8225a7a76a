// What both pages share: the API key (kept in this tab's sessionStorage, never in the page),
// calls to the gateway's own API, errors in words a person can act on, and the key form.

const KEY_ITEM = "expertmesh.api-key";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_ITEM) || "",
  set: (key) => (key ? sessionStorage.setItem(KEY_ITEM, key) : sessionStorage.removeItem(KEY_ITEM)),
};

export class ApiError extends Error {
  constructor(status, message, code = null, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  static async from(response) {
    let message = `${response.status} ${response.statusText}`;
    let code = null;
    try {
      const body = await response.json();
      message = body?.error?.message || message;
      code = body?.error?.code || null;
    } catch { /* not JSON: keep the status line */ }
    return new ApiError(response.status, message, code, response.headers.get("retry-after"));
  }
}

/** fetch() on the gateway with the key; a non-2xx answer throws an ApiError. */
export async function callApi(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  const key = apiKey.get();
  if (key) headers.authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `cannot reach the gateway (${error.message})`, "network");
  }
  if (!response.ok) throw await ApiError.from(response);
  return response;
}

/** What went wrong, said so that the reader knows what to do next. */
export function explain(error) {
  if (!(error instanceof ApiError)) return `Something went wrong in this page: ${error.message}`;
  if (error.status === 401) {
    return apiKey.get()
      ? "The gateway refused this API key (401 invalid_api_key). Check the key, enter it above and press \u201cUse key\u201d."
      : "This gateway needs an API key: enter it above and press \u201cUse key\u201d.";
  }
  if (error.status === 429) {
    const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
    return `Rate limited (429): ${error.message}${wait}`;
  }
  if (error.status === 0) return `Cannot reach the gateway: is it running? (${error.message})`;
  return `${error.status}${error.code ? ` ${error.code}` : ""}: ${error.message}`;
}

/** The page's one message line (an alert for screen readers); null hides it. */
export function notify(text, kind = "error") {
  const notice = document.getElementById("notice");
  notice.hidden = !text;
  notice.textContent = text || "";
  notice.className = `notice ${kind}`;
  notice.setAttribute("role", kind === "error" ? "alert" : "status");
}

/** The server-sent events of a streamed response: each event's data, as text. */
export async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart());
      if (data.length) yield data.join("\n");
    }
  }
}

/** Wire the header's key form: show the stored key, store a new one and call `onChange`. */
export function setUpKeyForm(onChange) {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.value = apiKey.get();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey.set(input.value.trim());
    onChange();
  });
}

// Stable colours per domain (and for the experts named after them); each has 3:1 or more on white.
const COLOURS = {
  medical: "#b3261e", legal: "#8e3b9e", finance: "#137547", code: "#1f5fa8", math: "#9a5b00",
  science: "#00707a", general: "#5b5f66", "fan-out": "#6b4fbb",
};
const SPARE = ["#3d5a80", "#7a4419", "#2e6b30", "#7b2d5b", "#005f73"];

export function colourFor(name) {
  if (COLOURS[name]) return COLOURS[name];
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return SPARE[hash % SPARE.length];
}

/** document.createElement with attributes and children (text or nodes). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

/** A labelled horizontal bar: a row of label, bar (role meter) and value. */
export function barRow(label, value, { max = 1, colour = "#1f5fa8", shown = value.toFixed(2), threshold = null } = {}) {
  const fill = el("span", { class: "bar-fill" });
  fill.style.width = `${Math.max(0, Math.min(1, value / max)) * 100}%`;
  fill.style.background = colour;
  const track = el("span", {
    class: "bar-track", role: "meter", "aria-label": label, "aria-valuemin": "0", "aria-valuemax": String(max),
    "aria-valuenow": String(value), "aria-valuetext": shown,
  }, fill);
  if (threshold !== null) {
    const mark = el("span", { class: "threshold-mark", title: `threshold ${threshold}` });
    mark.style.left = `calc(${threshold / max * 100}% - 1px)`;
    track.append(mark);
  }
  return el("li", { class: "bar-row" }, el("span", { class: "bar-label", text: label }), track,
    el("span", { class: "bar-value", text: shown }));
}

export const ms = (value) => (value === null || value === undefined ? "–" : value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value.toFixed(value < 10 ? 1 : 0)} ms`);
export const percent = (value) => `${(value * 100).toFixed(value > 0 && value < 0.1 ? 1 : 0)}%`;
