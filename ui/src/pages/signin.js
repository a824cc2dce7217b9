import { h } from "../dom.js";
import * as api from "../api.js";

export function signInPage(notice, done) {
  const input = h("input", { id: "key", type: "password", autocomplete: "off", spellcheck: "false",
                             required: true, "aria-describedby": "key-help" });
  const message = h("p", { class: notice ? "status error" : "status", role: "alert" }, notice || "");
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h("form", { class: "card signin", onsubmit: async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) { message.className = "status error"; message.textContent = "Paste an API key first."; return; }
    button.disabled = true;
    message.className = "status busy";
    message.textContent = "Checking the key…";
    try {
      const who = await api.get("/api/v3/me", { key });
      api.setKey(key);
      done(who);
    } catch (err) {
      message.className = "status error";
      message.textContent = err.status === 401
        ? "That API key was refused: it is wrong, revoked or expired (or its account is disabled). " +
          "Check it and try again."
        : "Cannot sign in: " + err.message;
      input.select();
    } finally {
      button.disabled = false;
    }
  } },
    h("h1", {}, "projecthub"),
    h("label", { for: "key" }, "API key"),
    input,
    h("p", { id: "key-help", class: "hint" },
      "The server's first start printed the admin's key; ", h("code", {}, "projecthub account create"),
      " and ", h("code", {}, "projecthub key create"), " make more, and so does the API keys page once you are in. ",
      "It is kept in this tab only (session storage) and sent as a Bearer header."),
    button,
    message);
  setTimeout(() => input.focus(), 0);
  return h("main", { class: "center" }, form);
}
