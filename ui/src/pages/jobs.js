// Jobs: the project's durable jobs with their status; start one; watch one's output live
// (GET …/events as SSE over fetch, resumed from the last byte offsets if it drops); kill.
import { h, clear, statusLine, act, when, stripAnsi } from "../dom.js";
import * as api from "../api.js";

const MAX_SHOWN = 2_000_000;   // characters of output kept in the page (the job keeps all)
// The job list the server keeps has no command line: this tab remembers the ones it started.
const COMMANDS = "projecthub.jobCommands";
const commands = () => { try { return JSON.parse(sessionStorage.getItem(COMMANDS) || "{}"); } catch { return {}; } };
function remember(jobId, command) {
  const all = commands();
  all[jobId] = command.slice(0, 300);
  const ids = Object.keys(all);
  for (const old of ids.slice(0, Math.max(0, ids.length - 200))) delete all[old];
  sessionStorage.setItem(COMMANDS, JSON.stringify(all));
}

export function jobsTab(body, { projectId, base }, jobId) {
  const status = statusLine();
  const controller = new AbortController();
  const root = `/api/v3/projects/${projectId}/jobs`;
  const list = h("div", { class: "list" }, h("p", { class: "status busy" }, "Loading jobs…"));

  async function refresh() {
    try {
      const jobs = await api.get(root, { signal: controller.signal });
      const known = commands();
      const shown = jobs.slice(0, 100);
      clear(list, jobs.length ? [h("table", { class: "table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", { class: "wide" }, "Command"), h("th", {}, "Status"), h("th", { class: "wide" }, "Started"), h("th", {}, "Actions"))),
        h("tbody", {}, shown.map((j) => {
          const kill = j.status === "running" && h("button", { class: "danger small", onclick: async () => {
            const ok = await act(status, "Killing the job…", () => api.del(`${root}/${api.enc(j.job_id)}`), kill);
            if (ok) { status.ok(ok.killed ? "Job killed." : "It had already finished."); refresh(); }
          } }, "Kill");
          return h("tr", { class: j.job_id === jobId ? "selected" : null },
            h("td", {}, h("a", { href: `${base}/jobs/${api.enc(j.job_id)}` }, h("code", {}, j.job_id.slice(0, 12)))),
            h("td", { class: "wide" }, known[j.job_id] ? h("code", {}, known[j.job_id]) : ""),
            h("td", {}, h("span", { class: "badge job-" + j.status }, j.status)),
            h("td", { class: "wide" }, when(j.start)), h("td", { class: "actions" }, kill));
        }))), jobs.length > shown.length ? h("p", { class: "hint" }, `The newest 100 of ${jobs.length} jobs.`) : null]
        : h("p", { class: "empty" }, "No jobs yet: start one above."));
    } catch (err) {
      if (err.name !== "AbortError" && err.status !== 401) clear(list, h("p", { class: "status error" }, "Cannot list jobs: " + err.message));
    }
  }

  const command = h("input", { id: "job-command", placeholder: "command, e.g. for i in 1 2 3; do echo $i; sleep 1; done",
                               required: true, class: "grow", spellcheck: "false" });
  const start = h("button", { type: "submit" }, "Start job");
  const form = h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    const job = await act(status, "Starting the job…", () => api.post(`/api/v3/projects/${projectId}/exec`,
      { command: command.value, bash: true, async: true, timeout: 0 }), start);
    if (job) { remember(job.job_id, command.value); status.ok("Job started."); location.hash = `${base}/jobs/${api.enc(job.job_id)}`; }
  } }, h("label", { for: "job-command", class: "sr-only" }, "Command to run as a job"), command, start);

  const panel = h("section", { class: "job" });
  clear(body, form, status.el, list, panel);
  refresh();
  const timer = setInterval(refresh, 5000);
  if (jobId) watch(jobId);

  function watch(id) {
    const out = h("pre", { class: "out job-output", "aria-live": "polite", tabindex: "0", "aria-label": "job output" });
    const jobStatus = statusLine();
    const stateEl = h("span", { class: "badge job-running" }, "connecting");
    const kill = h("button", { class: "danger small" }, "Kill");
    kill.addEventListener("click", async () => {
      const ok = await act(jobStatus, "Killing the job…", () => api.del(`${root}/${api.enc(id)}`), kill);
      if (ok) jobStatus.ok(ok.killed ? "Kill sent." : "It had already finished.");
    });
    const cmd = commands()[id];
    clear(panel, h("div", { class: "row" }, h("h2", {}, "Job ", h("code", {}, id.slice(0, 12))), stateEl, kill),
      cmd ? h("p", {}, h("code", {}, "$ " + cmd)) : null, jobStatus.el, out);
    let shown = 0;
    const write = (text, cls) => {
      if (shown > MAX_SHOWN) return;
      shown += text.length;
      const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      out.append(cls ? h("span", { class: cls }, stripAnsi(text)) : stripAnsi(text));
      if (shown > MAX_SHOWN) out.append(h("em", {}, "\n[more output: download it from the job's output endpoint]"));
      if (stick) out.scrollTop = out.scrollHeight;
    };
    let offsets = "0:0";
    (async () => {
      for (let attempt = 0; attempt < 20; attempt++) {
        let ended = false;
        try {
          await api.sse("GET", `${root}/${api.enc(id)}/events`, { signal: controller.signal,
            headers: { "Last-Event-ID": offsets },
            onEvent: (ev) => {
              if (ev.id) offsets = ev.id;
              if (jobStatus.el.classList.contains("busy")) jobStatus.clear();
              if (ev.event === "stdout") write(ev.data.data);
              else if (ev.event === "stderr") write(ev.data.data, "stderr");
              else if (ev.event === "stats") {
                stateEl.textContent = `running · ${Math.round(ev.data.cpu_pct || 0)} % CPU · ${(ev.data.mem_rss || 0).toFixed(0)} MiB`;
              } else if (ev.event === "done") {
                ended = true;
                const r = ev.data.record || {};
                stateEl.className = "badge job-" + r.status;
                stateEl.textContent = r.status + (r.exit_code != null ? ` (exit code ${r.exit_code})` : "") +
                  (r.signal ? ` (${r.signal})` : "") + (typeof r.wall_s === "number" ? ` in ${r.wall_s.toFixed(1)} s` : "");
                kill.hidden = true;
                refresh();
              } else if (ev.event === "error") {
                ended = true;
                jobStatus.error((ev.data && ev.data.error) || "the stream failed");
              }
            } });
          if (ended) return;
        } catch (err) {
          if (err.name === "AbortError" || err.status === 401) return;
          if (err.status && err.status < 500) { jobStatus.error(err.message); return; }
        }
        jobStatus.busy("Connection lost; resuming the output…");
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
  }

  return () => { clearInterval(timer); controller.abort(); };
}
