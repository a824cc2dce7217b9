// A project's overview: state with start/stop, live usage charts (memory, CPU, processes,
// sampled every 2 s from GET /api/v3/projects/{id}), limits and collaborators.
import { h, clear, statusLine, act, bytes, when } from "../dom.js";
import * as api from "../api.js";
import { stateBadge } from "./projects.js";

const SAMPLES = 60;

// a small line chart on a canvas (no library; CSP-safe: drawn, never injected)
function chart(label, unit, max) {
  const canvas = h("canvas", { width: 300, height: 80, role: "img", "aria-label": label });
  const value = h("span", { class: "value" }, "–");
  const points = [];
  function draw() {
    const ctx = canvas.getContext("2d");
    const { width, height } = canvas;
    ctx.clearRect(0, 0, width, height);
    const top = Math.max(max(), Math.max(...points) * 1.25, 1e-9);   // headroom above the peak
    ctx.strokeStyle = "#c8ccd4";
    ctx.strokeRect(0.5, 0.5, width - 1, height - 1);
    if (points.length < 1) return;
    ctx.beginPath();
    const span = Math.max(points.length, 15) - 1;   // a few samples already fill a good part
    points.forEach((v, i) => {
      const x = width - (points.length - 1 - i) * (width / span);
      const y = height - 2 - (v / top) * (height - 6);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.strokeStyle = "#2563eb";
    ctx.lineWidth = 2;
    ctx.stroke();
  }
  return {
    el: h("figure", { class: "chart" }, h("figcaption", {}, label, ": ", value), canvas),
    push(v, text) {
      points.push(v);
      if (points.length > SAMPLES) points.shift();
      value.textContent = text;
      canvas.setAttribute("aria-label", `${label}: ${text}`);
      draw();
    },
    idle(text) { value.textContent = text; },
  };
}

export function overview(body, { projectId, me }) {
  const status = statusLine();
  const stateEl = h("span", {}, "…");
  const toggle = h("button", { class: "secondary" }, "…");
  let limits = null;
  let last = null;   // previous {t, cpu_s} for CPU %
  const mem = chart("Memory", "MiB", () => 0);   // scaled to what is used (the limit is in the text)
  const cpu = chart("CPU", "%", () => 100);   // percent of one core (may pass 100 on several)
  const procs = chart("Processes", "", () => (limits && limits.pids ? Math.min(limits.pids, 32) : 8));
  const limitsEl = h("dl", { class: "limits" });
  const collabEl = h("ul", { class: "collaborators" });
  const usageNote = h("p", { class: "hint" }, "");
  let project = null;

  async function refresh() {
    try {
      project = await api.get(`/api/v3/projects/${projectId}`);
    } catch (err) {
      if (err.status !== 401) status.error("Cannot read the project: " + err.message);
      return;
    }
    const running = project.state.state === "running";
    clear(stateEl, stateBadge(project.state), project.state.reason ? h("span", { class: "hint" }, " ", project.state.reason) : null);
    toggle.textContent = running ? "Stop" : "Start";
    const s = project.status || {};
    if (running && s.memory) {
      const now = performance.now() / 1000;
      mem.push(s.memory.rss / 1024, (s.memory.rss / 1024).toFixed(1) + " MiB" +
        (limits && limits.memory_bytes ? " of " + bytes(limits.memory_bytes) : ""));
      if (last && typeof s.cpu_s === "number") {
        const pct = Math.max(0, (s.cpu_s - last.cpu) / (now - last.t) * 100);
        cpu.push(pct, pct.toFixed(0) + " %");
      }
      last = { t: now, cpu: s.cpu_s };
      procs.push(s.processes || 0, String(s.processes || 0) + (limits && limits.pids ? " of " + limits.pids : ""));
      usageNote.textContent = "Updated every 2 seconds. Started " + when(s.started) + ".";
    } else {
      last = null;
      for (const c of [mem, cpu, procs]) c.idle("not running");
      usageNote.textContent = "Start the project to see its usage.";
    }
    renderCollaborators();
  }

  function renderCollaborators() {
    const mine = me.account && me.account.account_id;
    const owner = mine && project.users[mine] && project.users[mine].group === "owner";
    clear(collabEl, Object.entries(project.users || {}).map(([id, u]) => {
      const remove = (owner && u.group !== "owner") || (id === mine && u.group !== "owner")
        ? h("button", { class: "danger small", onclick: async () => {
          const ok = await act(status, "Removing the collaborator…",
            () => api.del(`/api/v3/projects/${projectId}/collaborators/${api.enc(id)}`), remove);
          if (ok !== undefined) { status.ok("Removed."); refresh(); }
        } }, id === mine ? "Leave" : "Remove") : null;
      return h("li", {}, h("code", {}, id), " ", h("span", { class: "badge" }, u.group), id === mine ? " (you)" : "", " ", remove);
    }));
  }

  async function loadLimits() {
    try {
      limits = await api.get(`/api/v3/projects/${projectId}/limits`);
      const rows = [
        ["Memory", bytes(limits.memory_bytes)], ["Processes", limits.pids ?? "unlimited"],
        ["CPU cores", limits.cpu_cores ?? "unlimited"], ["Disk", bytes(limits.disk_bytes)],
        ["/tmp", bytes(limits.tmp_bytes)], ["Network", limits.network ? "allowed" : "none"],
        ["Idle stop", limits.idle_timeout_s ? `after ${Math.round(limits.idle_timeout_s / 60)} min` : "never"],
      ];
      clear(limitsEl, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
    } catch (err) {
      if (err.status !== 401) clear(limitsEl, h("p", { class: "status error" }, "Cannot read limits: " + err.message));
    }
  }

  toggle.addEventListener("click", async () => {
    const running = project && project.state.state === "running";
    const ok = await act(status, running ? "Stopping the project…" : "Starting the project…",
      () => api.post(`/api/v3/projects/${projectId}/${running ? "stop" : "start"}`), toggle);
    if (ok) { status.ok(running ? "Stopped." : "Started."); refresh(); }
  });

  const who = h("input", { id: "collab-id", placeholder: "account id (UUID)", required: true, size: 38 });
  const add = h("button", { type: "submit" }, "Add");
  const addForm = h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    const ok = await act(status, "Adding the collaborator…",
      () => api.post(`/api/v3/projects/${projectId}/collaborators`, { account_id: who.value.trim() }), add);
    if (ok) { who.value = ""; status.ok("Collaborator added."); refresh(); }
  } }, h("label", { for: "collab-id", class: "sr-only" }, "Collaborator account id"), who, add);
  if (!me.account) addForm.hidden = true;

  clear(body,
    h("div", { class: "row" }, h("strong", {}, "State: "), stateEl, toggle),
    status.el,
    h("h2", {}, "Usage"), usageNote,
    h("div", { class: "charts" }, mem.el, cpu.el, procs.el),
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "Limits"), limitsEl),
      h("section", {}, h("h2", {}, "Collaborators"), collabEl, addForm)),
    h("p", { class: "hint" }, "Project id: ", h("code", {}, projectId)));
  loadLimits().then(refresh);
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}
