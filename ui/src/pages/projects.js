// The project list: state, create, start/stop, delete (owners), refreshed every few seconds.
import { h, clear, statusLine, act, when, confirmButton } from "../dom.js";
import * as api from "../api.js";

export function stateBadge(state) {
  const name = (state && state.state) || "unknown";
  return h("span", { class: "badge state-" + name, title: state && state.reason ? state.reason : null }, name);
}

export function projectsPage(main, me) {
  document.title = "Projects · projecthub";
  const status = statusLine();
  const list = h("div", { class: "list", "aria-busy": "true" }, h("p", { class: "status busy" }, "Loading projects…"));
  const title = h("input", { id: "new-title", placeholder: "Title", required: true, maxlength: 200 });
  const start = h("input", { id: "new-start", type: "checkbox", checked: true });
  const createButton = h("button", { type: "submit" }, "Create project");
  const form = h("form", { class: "row card", onsubmit: async (e) => {
    e.preventDefault();
    const created = await act(status, "Creating the project…", () =>
      api.post("/api/v3/projects", { title: title.value.trim(), start: start.checked }), createButton);
    if (created) { status.ok("Project created."); title.value = ""; location.hash = "#/p/" + created.project_id; }
  } },
    h("label", { for: "new-title", class: "sr-only" }, "New project title"), title,
    h("label", { class: "inline" }, start, " start it"), createButton);
  if (!me.account) form.hidden = true;   // a project key cannot create projects

  async function refresh() {
    try {
      const projects = await api.get("/api/v3/projects" + "");
      list.setAttribute("aria-busy", "false");
      if (!projects.length) { clear(list, h("p", { class: "empty" }, "No projects yet: create one above.")); return; }
      clear(list, h("table", { class: "table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Project"), h("th", {}, "State"), h("th", { class: "wide" }, "Last edited"),
          h("th", {}, "Actions"))),
        h("tbody", {}, projects.map((p) => row(p)))));
    } catch (err) {
      if (err.status !== 401) status.error("Cannot list projects: " + err.message);
    }
  }

  function row(p) {
    const running = p.state.state === "running";
    const owner = me.account && p.users[me.account.account_id] && p.users[me.account.account_id].group === "owner";
    const toggle = h("button", { class: "secondary", onclick: async () => {
      const ok = await act(status, (running ? "Stopping " : "Starting ") + (p.title || "the project") + "…",
        () => api.post(`/api/v3/projects/${p.project_id}/${running ? "stop" : "start"}`), toggle);
      if (ok) { status.ok(running ? "Stopped." : "Started."); refresh(); }
    } }, running ? "Stop" : "Start");
    const remove = (owner || me.is_admin) && confirmButton("Delete", "Delete it with all its files?", "Yes, delete",
      async (yes) => {
        const ok = await act(status, "Deleting…", () => api.del(`/api/v3/projects/${p.project_id}`), yes);
        if (ok !== undefined) { status.ok("Project deleted."); refresh(); }
      }, "danger");
    return h("tr", {},
      h("td", {}, h("a", { href: "#/p/" + p.project_id }, p.title || "(untitled)"),
        p.description ? h("div", { class: "hint" }, p.description) : null),
      h("td", {}, stateBadge(p.state)),
      h("td", { class: "wide" }, when(p.last_edited)),
      h("td", { class: "actions" }, toggle, remove));
  }

  clear(main, h("h1", {}, "Projects"), form, status.el, list);
  refresh();
  const timer = setInterval(refresh, 5000);
  return () => clearInterval(timer);
}
