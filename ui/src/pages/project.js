// One project: tabs for its overview, terminal, files, sessions and jobs.
import { h, clear } from "../dom.js";
import * as api from "../api.js";
import { overview } from "./overview.js";
import { filesTab } from "./files.js";
import { sessionsTab } from "./sessions.js";
import { jobsTab } from "./jobs.js";
import { terminalTab } from "./terminal.js";

const TABS = [["", "Overview"], ["terminal", "Terminal"], ["files", "Files"], ["sessions", "Sessions"], ["jobs", "Jobs"]];

export function projectPage(main, projectId, rest, me) {
  const tab = rest[0] || "";
  const base = "#/p/" + projectId;
  const title = h("h1", {}, "Project");
  const body = h("section", { class: "tab" });
  clear(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / "),
    title,
    h("nav", { class: "tabs", "aria-label": "project" }, TABS.map(([id, text]) =>
      h("a", { href: id ? `${base}/${id}` : base, "aria-current": id === tab ? "page" : null }, text))),
    body);
  api.get(`/api/v3/projects/${projectId}`).then((p) => {
    title.textContent = p.title || "(untitled)";
    document.title = `${TABS.find(([id]) => id === tab)?.[1] || "Project"} · ${p.title || "project"} · projecthub`;
  }).catch((err) => { if (err.status !== 401) title.textContent = "Project: " + err.message; });
  const ctx = { projectId, me, base };
  if (tab === "terminal") return terminalTab(body, ctx);
  if (tab === "files") return filesTab(body, ctx, rest.slice(1).join("/"));
  if (tab === "sessions") return sessionsTab(body, ctx, rest[1]);
  if (tab === "jobs") return jobsTab(body, ctx, rest[1]);
  return overview(body, ctx);
}
