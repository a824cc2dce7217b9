// Sessions: a notebook-like page on a persistent kernel session.  Cells run with
// Shift-Enter (or the Run button) and stream their outputs (POST …/stream, SSE over fetch);
// rich outputs: images (data: URLs), HTML (a sandboxed iframe without scripts), errors with
// their traceback.  Interrupt, restart and the kernel's state are in the toolbar.
import { h, clear, statusLine, act, when, stripAnsi, confirmButton } from "../dom.js";
import * as api from "../api.js";

const IMAGES = ["image/png", "image/jpeg", "image/gif", "image/webp"];

// One output item (CoCalc's shape: a Jupyter message's content) as DOM; nothing from the
// kernel is ever parsed as markup in this page.
export function renderOutput(item) {
  if (item.name && item.text !== undefined) {
    const text = Array.isArray(item.text) ? item.text.join("") : item.text;
    const stream = item.name === "stderr" ? "stderr" : "stdout";   // the kernel's word is not a class name
    return h("pre", { class: "out stream " + stream, "data-stream": String(item.name) }, stripAnsi(text));
  }
  if (item.ename !== undefined) {
    return h("pre", { class: "out error", role: "alert" },
      h("strong", {}, `${item.ename}: ${item.evalue}`), "\n",
      stripAnsi((item.traceback || []).join("\n")));
  }
  if (item.data) {
    const data = item.data;
    for (const type of IMAGES) {
      if (data[type]) {
        const alt = data["text/plain"] ? stripAnsi(data["text/plain"]) : "image output";
        return h("img", { class: "out image", src: `data:${type};base64,${String(data[type]).replace(/\s/g, "")}`, alt });
      }
    }
    if (data["image/svg+xml"]) {   // as an image: scripts inside an <img> SVG never run
      const svg = Array.isArray(data["image/svg+xml"]) ? data["image/svg+xml"].join("") : data["image/svg+xml"];
      return h("img", { class: "out image", alt: "SVG output",
                        src: URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" })) });
    }
    if (data["text/html"]) {
      const html = Array.isArray(data["text/html"]) ? data["text/html"].join("") : data["text/html"];
      // untrusted: an opaque-origin frame with scripts, forms and navigation all off
      const frame = h("iframe", { class: "out html", sandbox: "", title: "HTML output", referrerpolicy: "no-referrer" });
      frame.srcdoc = html;
      return frame;
    }
    if (data["text/plain"] !== undefined) {
      const text = Array.isArray(data["text/plain"]) ? data["text/plain"].join("") : data["text/plain"];
      return h("pre", { class: "out result" }, stripAnsi(text));
    }
    return h("pre", { class: "out result" }, "[output of type " + Object.keys(data).join(", ") + "]");
  }
  return null;
}

export function sessionsTab(body, { projectId, base }, sessionId) {
  const status = statusLine();
  const controller = new AbortController();
  const root = `/api/v3/projects/${projectId}/sessions`;

  if (!sessionId) {
    const list = h("div", { class: "list" }, h("p", { class: "status busy" }, "Loading sessions…"));
    const name = h("input", { id: "session-name", placeholder: "name (optional)", maxlength: 100 });
    const create = h("button", { type: "submit" }, "New session");
    const form = h("form", { class: "row", onsubmit: async (e) => {
      e.preventDefault();
      const s = await act(status, "Starting a Python kernel…", () => api.post(root, name.value.trim() ? { name: name.value.trim() } : {}), create);
      if (s) location.hash = `${base}/sessions/${api.enc(s.session_id)}`;
    } }, h("label", { for: "session-name", class: "sr-only" }, "Session name"), name, create);
    async function refresh() {
      try {
        const sessions = await api.get(root, { signal: controller.signal });
        clear(list, sessions.length ? h("table", { class: "table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Session"), h("th", {}, "Kernel"), h("th", {}, "State"), h("th", { class: "wide" }, "Last used"), h("th", {}, "Actions"))),
          h("tbody", {}, sessions.map((s) => {
            const remove = confirmButton("Delete", "Its kernel and variables go.", "Yes, delete", async (yes) => {
              const ok = await act(status, "Deleting the session…", () => api.del(`${root}/${api.enc(s.session_id)}`), yes);
              if (ok !== undefined) { status.ok("Session deleted."); refresh(); }
            });
            const label = s.name === s.session_id ? "session " + s.session_id.slice(0, 8) : s.name;
            return h("tr", {}, h("td", {}, h("a", { href: `${base}/sessions/${api.enc(s.session_id)}` }, label)),
              h("td", {}, s.kernel), h("td", {}, h("span", { class: "badge kernel-" + s.state }, s.state)),
              h("td", { class: "wide" }, when(s.last_used)), h("td", { class: "actions" }, remove));
          }))) : h("p", { class: "empty" }, "No sessions: start one to run code cells in a kernel that keeps its state."));
      } catch (err) {
        if (err.name !== "AbortError" && err.status !== 401) clear(list, h("p", { class: "status error" }, "Cannot list sessions: " + err.message));
      }
    }
    clear(body, form, status.el, list);
    refresh();
    return () => controller.abort();
  }

  // -- the notebook ------------------------------------------------------------------
  const sroot = `${root}/${api.enc(sessionId)}`;
  const stateEl = h("span", { class: "badge" }, "…");
  const cells = h("div", { class: "cells" });
  let running = 0;
  // the cells' code survives a reload of this tab (the kernel keeps the variables anyway)
  const saved = `projecthub.cells.${projectId}.${sessionId}`;
  let saveTimer = null;
  const flush = () => {
    clearTimeout(saveTimer);
    const codes = [...cells.querySelectorAll("textarea.code")].map((t) => t.value);
    try { sessionStorage.setItem(saved, JSON.stringify(codes.slice(0, 500))); } catch { /* full: not kept */ }
  };
  const save = () => { clearTimeout(saveTimer); saveTimer = setTimeout(flush, 300); };
  window.addEventListener("pagehide", flush);

  function showState(state) {
    stateEl.className = "badge kernel-" + state;
    stateEl.textContent = "kernel " + state;
  }

  async function poll() {
    try {
      const s = await api.get(sroot, { signal: controller.signal });
      if (!running || s.state !== "idle") showState(s.state);
      title.textContent = `${s.name === s.session_id ? "Session " + s.session_id.slice(0, 8) : s.name} (${s.kernel})`;
    } catch (err) {
      if (err.name !== "AbortError" && err.status !== 401) status.error("Cannot read the session: " + err.message);
    }
  }

  function addCell(code = "") {
    const input = h("textarea", { class: "code", rows: Math.max(2, code.split("\n").length), spellcheck: "false",
                                  "aria-label": "code cell (Shift-Enter runs it)" });
    input.value = code;
    const count = h("span", { class: "count" }, "[ ]");
    const outputs = h("div", { class: "outputs", "aria-live": "polite" });
    const cellStatus = statusLine();
    const run = h("button", { class: "small" }, "Run");
    const cell = h("div", { class: "cell" }, h("div", { class: "row" }, count, input, run), cellStatus.el, outputs);
    const grow = () => { input.rows = Math.max(2, input.value.split("\n").length); };
    input.addEventListener("input", () => { grow(); save(); });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && e.shiftKey) {
        e.preventDefault();
        execute();
        const next = cell.nextElementSibling;
        (next ? next.querySelector("textarea") : addCell().querySelector("textarea")).focus();
      }
    });
    run.addEventListener("click", execute);
    cell.execute = execute;   // for Run all

    async function execute() {
      const code = input.value;
      if (!code.trim()) return;
      clear(outputs);
      count.textContent = "[*]";
      run.disabled = true;
      cell.classList.add("running");
      running++;
      showState("busy");
      cellStatus.busy("Running…");
      try {
        let result = null;
        await api.sse("POST", sroot + "/stream", { body: { code, timeout_s: 3600 }, signal: controller.signal, onEvent: (ev) => {
          if (ev.event === "output") {
            const item = ev.data.item || {};
            if (item.wait !== undefined && Object.keys(item).length === 1) { clear(outputs); return; }
            // consecutive text of one stream goes into one block (a print loop is one output)
            const last = outputs.lastElementChild;
            if (item.name && item.text !== undefined && last && last.dataset.stream === String(item.name)) {
              last.append(stripAnsi(Array.isArray(item.text) ? item.text.join("") : item.text));
              return;
            }
            const el = renderOutput(item);
            if (el) outputs.append(el);
          } else if (ev.event === "done") {
            result = ev.data.result;
          } else if (ev.event === "error") {
            throw new Error((ev.data && ev.data.error) || "the cell failed");
          }
        } });
        count.textContent = `[${result && result.execution_count != null ? result.execution_count : " "}]`;
        if (!result) cellStatus.error("The stream ended without a result (connection lost?).");
        else if (result.timed_out) cellStatus.error("Timed out.");
        else if (result.interrupted) cellStatus.error("Interrupted.");
        else if (result.restarted && !result.state_survived) cellStatus.error("The kernel restarted: earlier variables are gone.");
        else cellStatus.clear();
      } catch (err) {
        if (err.name === "AbortError") return;
        count.textContent = "[!]";
        cellStatus.error(err.message);
      } finally {
        running--;
        run.disabled = false;
        cell.classList.remove("running");
        poll();
      }
    }
    cells.append(cell);
    save();
    return cell;
  }

  const title = h("h2", {}, "Session");
  const interrupt = h("button", { class: "secondary" }, "Interrupt");
  const restart = confirmButton("Restart", "Restart the kernel? Its variables are lost.", "Yes, restart", async (yes) => {
    const ok = await act(status, "Restarting the kernel…", () => api.post(sroot + "/restart"), yes);
    if (ok) { status.ok("Kernel restarted."); showState(ok.state); }
  }, "secondary");
  const more = h("button", { class: "secondary" }, "Add cell");
  const runAll = h("button", { class: "secondary" }, "Run all");
  runAll.addEventListener("click", async () => {
    runAll.disabled = true;
    try {
      for (const cell of [...cells.children]) {
        if (!cell.isConnected || !cell.querySelector("textarea").value.trim()) continue;
        await cell.execute();
        if (cell.querySelector(".outputs pre.out.error")) { status.error("Stopped at a cell that raised an error."); break; }
      }
    } finally {
      runAll.disabled = false;
    }
  });
  interrupt.addEventListener("click", async () => {
    const ok = await act(status, "Interrupting…", () => api.post(sroot + "/interrupt"), interrupt);
    if (ok) status.ok("Interrupt sent.");
  });
  more.addEventListener("click", () => addCell().querySelector("textarea").focus());
  clear(body,
    h("p", { class: "crumbs" }, h("a", { href: `${base}/sessions` }, "Sessions"), " / "),
    h("div", { class: "row toolbar" }, title, stateEl, runAll, interrupt, restart, more),
    h("p", { class: "hint" }, "Shift-Enter runs a cell and moves to the next. Variables stay until the kernel restarts."),
    status.el, cells);
  let restored = [];
  try { restored = JSON.parse(sessionStorage.getItem(saved) || "[]"); } catch { /* none */ }
  for (const code of restored) if (typeof code === "string") addCell(code);
  if (!restored.length || restored[restored.length - 1].trim()) addCell();
  cells.lastElementChild.querySelector("textarea").focus();
  poll();
  const timer = setInterval(() => { if (!running) poll(); }, 3000);
  return () => { clearInterval(timer); flush(); window.removeEventListener("pagehide", flush); controller.abort(); };
}
