// API keys of the signed-in account: list, create (the secret is shown once), revoke.
import { h, clear, statusLine, act, when, confirmButton } from "../dom.js";
import * as api from "../api.js";

export function keysPage(main, me) {
  document.title = "API keys · projecthub";
  const status = statusLine();
  const list = h("div", { class: "list" }, h("p", { class: "status busy" }, "Loading keys…"));
  const secret = h("div", { class: "secret", "aria-live": "polite" });

  async function refresh() {
    try {
      const keys = await api.get("/api/v3/keys");
      clear(list, keys.length ? h("table", { class: "table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Key"), h("th", { class: "wide" }, "Project"),
          h("th", { class: "wide" }, "Last used"), h("th", {}, "Expires"), h("th", {}, "Actions"))),
        h("tbody", {}, keys.map((k) => {
          const mine = k.id === me.key_id;
          const revoke = confirmButton("Revoke", "Programs using it stop working at once." +
            (mine ? " This tab is signed in with it: you will be signed out." : ""), "Yes, revoke", async (yes) => {
            const ok = await act(status, "Revoking…", () => api.del(`/api/v3/keys/${k.id}`), yes);
            if (ok !== undefined) { status.ok("Key revoked."); refresh(); }
          });
          return h("tr", { class: mine ? "selected" : null }, h("td", {}, k.name || "(no name)",
            mine ? h("span", { class: "badge" }, "this tab") : null), h("td", {}, h("code", {}, k.trunc || "")),
            h("td", { class: "wide" }, k.project_id ? h("a", { href: "#/p/" + k.project_id }, h("code", {}, k.project_id.slice(0, 8))) : "account"),
            h("td", { class: "wide" }, when(k.last_active) || "never"), h("td", {}, when(k.expire) || "never"),
            h("td", { class: "actions" }, revoke));
        }))) : h("p", { class: "empty" }, "No keys."));
    } catch (err) {
      if (err.status !== 401) clear(list, h("p", { class: "status error" }, "Cannot list keys: " + err.message));
    }
  }

  const name = h("input", { id: "key-name", placeholder: "name, e.g. laptop", maxlength: 100 });
  const project = h("input", { id: "key-project", placeholder: "project id (optional: a project key)", size: 38 });
  const expire = h("input", { id: "key-expire", type: "date" });
  const create = h("button", { type: "submit" }, "Create key");
  const form = h("form", { class: "row card", onsubmit: async (e) => {
    e.preventDefault();
    const body = { name: name.value.trim() };
    if (project.value.trim()) body.project_id = project.value.trim();
    if (expire.value) body.expire = new Date(expire.value + "T23:59:59").toISOString();
    const made = await act(status, "Creating the key…", () => api.post("/api/v3/keys", body), create);
    if (!made) return;
    const value = h("input", { readonly: true, value: made.secret, class: "grow", "aria-label": "the new key" });
    clear(secret, h("p", {}, h("strong", {}, "Copy the new key now: it is shown only once.")),
      h("div", { class: "row" }, value, h("button", { class: "secondary", onclick: () => { value.select(); navigator.clipboard?.writeText(made.secret); } }, "Copy"),
        h("button", { class: "secondary", onclick: () => clear(secret) }, "Hide")));
    value.select();
    name.value = ""; project.value = ""; expire.value = "";
    refresh();
  } },
    h("label", { for: "key-name" }, "Name"), name, h("label", { for: "key-project" }, "Project"), project,
    h("label", { for: "key-expire" }, "Expires"), expire, create);

  clear(main, h("h1", {}, "API keys"), form, secret, status.el, list);
  refresh();
  return () => clear(secret);
}
