// Terminal: a real shell (bash -l on a PTY in the project's sandbox) over a WebSocket,
// rendered with xterm.js.  The key goes in the first message, never in the URL.  The
// terminal survives a page reload: this tab remembers its id and attaches again (the server
// replays the scrollback).
import { h, clear, statusLine } from "../dom.js";
import * as api from "../api.js";

const CLOSE_REASONS = {
  4401: "The server refused your API key.",
  4403: "You have no access to this project.",
  4404: "That terminal no longer exists.",
};

export function terminalTab(body, { projectId }) {
  const status = statusLine();
  const host = h("div", { class: "terminal", "aria-label": "terminal" });
  const again = h("button", { class: "secondary", hidden: true }, "New terminal");
  const list = h("span", { class: "hint" });
  clear(body, h("div", { class: "row" }, status.el, again, list), host);
  const root = `/api/v3/projects/${projectId}/terminals`;
  const remembered = "projecthub.terminal." + projectId;
  let socket = null;
  let term = null;
  let fit = null;
  let closed = false;
  let observer = null;
  const encoder = new TextEncoder();

  function send(obj) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(typeof obj === "string" ? obj : JSON.stringify(obj));
  }

  async function terminalId() {
    const known = sessionStorage.getItem(remembered);
    if (known) {
      const { terminals } = await api.get(root);
      if (terminals.some((t) => t.terminal_id === known)) return known;
    }
    const created = await api.post(root, { cols: term.cols, rows: term.rows });
    sessionStorage.setItem(remembered, created.terminal_id);
    return created.terminal_id;
  }

  async function connect() {
    again.hidden = true;
    status.busy("Starting the project and its terminal…");
    let id;
    try {
      id = await terminalId();
    } catch (err) {
      if (err.status !== 401) status.error("Cannot open a terminal: " + err.message);
      return;
    }
    if (closed) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${root}/${encodeURIComponent(id)}/ws`);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      socket.send(JSON.stringify({ type: "auth", token: api.getKey() }));
      send({ type: "resize", cols: term.cols, rows: term.rows });
      status.ok("Connected.");
      term.focus();
    };
    socket.onmessage = (e) => {
      if (typeof e.data !== "string") { term.write(new Uint8Array(e.data)); return; }
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      if (msg.type === "exit") {
        sessionStorage.removeItem(remembered);
        status.error(`The shell exited${msg.code != null ? " with code " + msg.code : ""}.`);
        again.textContent = "New terminal";
        again.hidden = false;
      }
    };
    socket.onclose = (e) => {
      if (closed) return;
      if (e.code === 4401) { api.refused(); return; }
      if (e.code === 4404) sessionStorage.removeItem(remembered);
      // the same shell when it still runs (the server replays what it missed), else a new one
      if (!again.textContent.startsWith("New")) again.textContent = sessionStorage.getItem(remembered) ? "Reconnect" : "New terminal";
      if (!status.el.classList.contains("error")) {
        status.error((CLOSE_REASONS[e.code] || `The connection closed (${e.code}${e.reason ? ": " + e.reason : ""}).`));
      }
      again.hidden = false;
    };
  }

  again.addEventListener("click", () => { term.reset(); again.textContent = ""; connect(); });

  status.busy("Loading the terminal…");
  import("../terminal.js").then(({ createTerminal }) => {
    if (closed) return;
    ({ term, fit } = createTerminal(host));
    fit.fit();
    term.onData((data) => { if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
    term.onBinary((data) => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(Uint8Array.from(data, (c) => c.charCodeAt(0)));
    });
    term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
    observer = new ResizeObserver(() => { try { fit.fit(); } catch { /* hidden */ } });
    observer.observe(host);
    connect();
  }).catch((err) => status.error("Cannot load the terminal: " + err.message));

  return () => {
    closed = true;
    if (observer) observer.disconnect();
    if (socket) socket.close(1000);
    if (term) term.dispose();
  };
}
