// Admin: accounts (disable/enable), the server's limits and its isolation report (what
// `projecthub doctor` checks, as this running server enforces it).  Admin keys only: the
// server refuses the calls to anyone else, the page only says so.
import { h, clear, statusLine, act, bytes, confirmButton } from "../dom.js";
import * as api from "../api.js";

export function adminPage(main, me) {
  document.title = "Admin · projecthub";
  const status = statusLine();
  if (!me.is_admin) {
    clear(main, h("h1", {}, "Admin"), h("p", { class: "status error" }, "This page is for admin keys only."));
    return () => {};
  }
  const accounts = h("div", { class: "list" }, h("p", { class: "status busy" }, "Loading accounts…"));
  const server = h("div", {}, h("p", { class: "status busy" }, "Loading the server report…"));

  async function loadAccounts() {
    try {
      const rows = await api.get("/api/v3/accounts");
      clear(accounts, h("table", { class: "table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", { class: "wide" }, "Email"), h("th", {}, "Account id"),
          h("th", {}, "Role"), h("th", {}, "State"), h("th", {}, "Actions"))),
        h("tbody", {}, rows.map((a) => {
          const self = me.account && a.account_id === me.account.account_id;
          const change = async (button) => {
            const ok = await act(status, a.disabled ? "Enabling…" : "Disabling…",
              () => api.patch(`/api/v3/accounts/${api.enc(a.account_id)}`, { disabled: !a.disabled }), button);
            if (ok) { status.ok(ok.disabled ? "Account disabled." : "Account enabled."); loadAccounts(); }
          };
          const toggle = self ? null : a.disabled
            ? h("button", { class: "secondary small", onclick: (e) => change(e.currentTarget) }, "Enable")
            : confirmButton("Disable", "Its keys stop working at once.", "Yes, disable", change);
          return h("tr", {}, h("td", {}, [a.first_name, a.last_name].join(" ").trim() || "(no name)", self ? " (you)" : ""),
            h("td", { class: "wide" }, a.email || ""), h("td", {}, h("code", {}, a.account_id)),
            h("td", {}, a.is_admin ? "admin" : "user"),
            h("td", {}, h("span", { class: "badge " + (a.disabled ? "state-stopped" : "state-running") }, a.disabled ? "disabled" : "active")),
            h("td", { class: "actions" }, toggle));
        }))),
        h("p", { class: "hint" }, "Create accounts with ", h("code", {}, "projecthub account create"), " on the server."));
    } catch (err) {
      if (err.status !== 401) clear(accounts, h("p", { class: "status error" }, "Cannot list accounts: " + err.message));
    }
  }

  const limitText = (name, v) => v === null || v === undefined ? "unlimited"
    : /bytes/.test(name) ? bytes(v) : typeof v === "boolean" ? (v ? "yes" : "no") : String(v);

  async function loadServer() {
    try {
      const s = await api.get("/api/v3/admin/server");
      const iso = s.isolation;
      clear(server,
        h("h2", {}, "Isolation"),
        h("p", { class: iso.all_enforced ? "status ok" : "status error" },
          iso.all_enforced ? "Every isolation layer is enforced." : "NOT fully isolated; missing: " + iso.missing.join(", ")),
        h("p", {}, "Mode ", h("code", {}, iso.mode), ", cgroups ", h("code", {}, iso.cgroup_version || "unavailable")),
        h("table", { class: "table" }, h("thead", {}, h("tr", {}, h("th", {}, "Layer"), h("th", {}, "Enforced"), h("th", {}, "Detail"))),
          h("tbody", {}, iso.layers.map((l) => h("tr", {}, h("td", {}, l.name),
            h("td", {}, h("span", { class: "badge " + (l.enforced ? "state-running" : "state-stopped") }, l.enforced ? "OK" : "MISSING")),
            h("td", {}, l.detail))))),
        iso.notes.length ? h("ul", { class: "hint" }, iso.notes.map((n) => h("li", {}, n))) : null,
        h("div", { class: "columns" },
          h("section", {}, h("h2", {}, "Default project limits"),
            h("dl", { class: "limits" }, Object.entries(s.project_limits).map(([k, v]) => [h("dt", {}, k), h("dd", {}, limitText(k, v))]))),
          h("section", {}, h("h2", {}, "Per-account limits"),
            h("dl", { class: "limits" }, Object.entries(s.account_limits).map(([k, v]) => [h("dt", {}, k), h("dd", {}, limitText(k, v))])))));
    } catch (err) {
      if (err.status !== 401) clear(server, h("p", { class: "status error" }, "Cannot read the server report: " + err.message));
    }
  }

  clear(main, h("h1", {}, "Admin"), status.el, h("h2", {}, "Accounts"), accounts, server);
  loadAccounts();
  loadServer();
  return () => {};
}
