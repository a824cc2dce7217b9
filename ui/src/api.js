// The one place that talks to the server: every call carries the key as a Bearer header
// (never in a URL, no cookies), and a refused key ends the session with a clear message.

const KEY = "projecthub.key";
let onSignedOut = () => {};

export function getKey() { return sessionStorage.getItem(KEY); }
export function setKey(key) { sessionStorage.setItem(KEY, key); }
// signing out (or a refused key) forgets everything this tab kept: the key, notebook cells,
// terminal ids, job commands (the next person at this tab starts clean)
export function forgetKey() { sessionStorage.clear(); }
export function whenSignedOut(fn) { onSignedOut = fn; }

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export const REFUSED = "The server refused your API key: it is wrong, was revoked or has expired, " +
  "or its account was disabled. Sign in with a valid key.";

// the key was refused mid-session: forget it and go back to the sign-in page
export function refused() {
  if (!getKey()) return;
  forgetKey();
  onSignedOut(REFUSED);
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) message = String(body.error);
  } catch { /* not JSON */ }
  return new ApiError(response.status, message);
}

export function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { Authorization: "Bearer " + key, ...extra } : { ...extra };
}

// fetch with the key; throws ApiError with the server's {"error"} text for any non-2xx
export async function call(method, path, { body, headers = {}, signal, raw = false, key } = {}) {
  const init = { method, headers: key ? { Authorization: "Bearer " + key, ...headers } : authHeaders(headers),
                 signal, cache: "no-store" };
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof ArrayBuffer || typeof body === "string") init.body = body;
    else { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "Cannot reach the server (" + err.message + "). Is it running?");
  }
  if (response.status === 401 && !key) {
    refused();
    throw await errorOf(response);
  }
  if (!response.ok) throw await errorOf(response);
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path, opts) => call("GET", path, opts);
export const post = (path, body, opts = {}) => call("POST", path, { ...opts, body });
export const put = (path, body, opts = {}) => call("PUT", path, { ...opts, body });
export const patch = (path, body, opts = {}) => call("PATCH", path, { ...opts, body });
export const del = (path, opts) => call("DELETE", path, opts);

// Server-Sent Events over fetch (EventSource cannot send an Authorization header).
// Calls onEvent({event, data, id}) for each event; resolves when the stream ends.
export async function sse(method, path, { body, signal, onEvent, headers = {} }) {
  const response = await call(method, path, { body, signal, raw: true,
                                              headers: { Accept: "text/event-stream", ...headers } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: "message", data: "", id: null };
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;   // heartbeat
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") event.id = val;
      }
      if (!data.length) continue;
      try { event.data = JSON.parse(data.join("\n")); } catch { event.data = data.join("\n"); }
      onEvent(event);
    }
  }
}

// PUT a file with upload progress (fetch has no upload progress; XHR does, with the header)
export function upload(path, file, onProgress, { ifMatch, signal } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    if (signal) signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.open("PUT", path);
    xhr.setRequestHeader("Authorization", "Bearer " + getKey());
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    if (ifMatch) xhr.setRequestHeader("If-Match", ifMatch);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded, e.total);
    xhr.onerror = () => reject(new ApiError(0, "the upload failed: connection lost"));
    xhr.onabort = () => reject(new ApiError(0, "the upload was cancelled"));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* empty */ }
      if (xhr.status === 401) { refused(); }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, (body && body.error) || `upload failed: HTTP ${xhr.status}`));
    };
    xhr.send(file);
  });
}

export const enc = encodeURIComponent;
export const filePath = (path) => path.split("/").map(encodeURIComponent).join("/");
