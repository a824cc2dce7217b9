// Admin: accounts (disable/enable), the server's limits and its isolation report (what
// `projecthub doctor` checks, as this running server enforces it).  Admin keys only: the
// server refuses the calls to anyone else, the page only says so.
import { h, clear, statusLine, act, bytes, when, confirmButton } from "../dom.js";
import * as api from "../api.js";

export function adminPage(main, me) {
  document.title = "Admin · projecthub";
  const status = statusLine();
  if (!me.is_admin) {
    clear(main, h("h1", {}, "Admin"), h("p", { class: "status error" }, "This page is for admin keys only."));
    return () => {};
  }
  const accounts = h("div", { class: "list" }, h("p", { class: "status busy" }, "Loading accounts…"));
  const keysPanel = h("section", { class: "account-keys", "aria-live": "polite" });

  // one account's keys (never their secrets), each revocable: a leaked key stops at once
  async function showKeys(a) {
    const who = [a.first_name, a.last_name].join(" ").trim() || a.email || a.account_id;
    clear(keysPanel, h("h2", {}, "Keys of ", who), h("p", { class: "status busy" }, "Loading…"));
    try {
      const keys = await api.get(`/api/v3/keys?account_id=${api.enc(a.account_id)}`);
      clear(keysPanel, h("div", { class: "row" }, h("h2", {}, "Keys of ", who),
        h("button", { class: "secondary small", onclick: () => clear(keysPanel) }, "Close")),
        keys.length ? h("table", { class: "table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Key"), h("th", { class: "wide" }, "Project"),
            h("th", { class: "wide" }, "Last used"), h("th", {}, "Actions"))),
          h("tbody", {}, keys.map((k) => h("tr", {}, h("td", {}, k.name || "(no name)"), h("td", {}, h("code", {}, k.trunc || "")),
            h("td", { class: "wide" }, k.project_id ? h("code", {}, k.project_id.slice(0, 8)) : "account"),
            h("td", { class: "wide" }, when(k.last_active) || "never"),
            h("td", { class: "actions" }, confirmButton("Revoke", "It stops working at once.", "Yes, revoke", async (yes) => {
              const ok = await act(status, "Revoking…", () => api.del(`/api/v3/keys/${k.id}`), yes);
              if (ok !== undefined) { status.ok("Key revoked."); showKeys(a); }
            })))))) : h("p", { class: "empty" }, "No keys."));
      keysPanel.scrollIntoView({ block: "nearest" });
    } catch (err) {
      if (err.status !== 401) clear(keysPanel, h("p", { class: "status error" }, "Cannot list the keys: " + err.message));
    }
  }
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
            h("td", { class: "actions" }, h("button", { class: "secondary small", onclick: () => showKeys(a) }, "Keys"), toggle));
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

  clear(main, h("h1", {}, "Admin"), status.el, h("h2", {}, "Accounts"), accounts, keysPanel, server);
  loadAccounts();
  loadServer();
  return () => {};
}
