// projecthub web UI: a hash router over a few pages.  Each page renders into <main> and
// returns a cleanup function (stop polling, close streams and sockets) run on navigation.
import "@xterm/xterm/css/xterm.css";   // small; a lazily loaded chunk's CSS would not load itself
import "./style.css";
import { h, clear } from "./dom.js";
import * as api from "./api.js";
import { signInPage } from "./pages/signin.js";
import { projectsPage } from "./pages/projects.js";
import { projectPage } from "./pages/project.js";
import { keysPage } from "./pages/keys.js";
import { adminPage } from "./pages/admin.js";

const root = document.getElementById("app");
let cleanup = null;
let me = null;            // GET /api/v3/me of the signed-in key
let notice = "";          // why we are on the sign-in page (e.g. a revoked key)

api.whenSignedOut((message) => {
  me = null;
  notice = message;
  if (location.hash !== "#/signin") location.hash = "#/signin";
  else render();
});

export function signedIn(who) {
  me = who;
  notice = "";
}

function signOut() {
  api.forgetKey();
  me = null;
  notice = "You are signed out. The key was forgotten by this tab.";
  location.hash = "#/signin";
}

function header() {
  const name = me && me.account ? [me.account.first_name, me.account.last_name].join(" ").trim() ||
    me.account.email || me.account.account_id : "project key";
  const links = me && me.account ? [["#/projects", "Projects"]] : [];
  if (me && me.account) links.push(["#/keys", "API keys"]);
  if (me && me.is_admin) links.push(["#/admin", "Admin"]);
  const current = location.hash.split("/").slice(0, 2).join("/");
  return h("header", { class: "top" },
    h("a", { class: "brand", href: "#/projects" }, "projecthub"),
    h("nav", { "aria-label": "main" }, links.map(([href, text]) =>
      h("a", { href, "aria-current": current === href ? "page" : null }, text))),
    h("span", { class: "who", title: me && me.account ? me.account.account_id : "" },
      name, me && me.is_admin ? " (admin)" : ""),
    h("button", { class: "secondary", onclick: signOut }, "Sign out"));
}

const decode = (part) => { try { return decodeURIComponent(part); } catch { return part; } };
let renders = 0;   // a newer navigation wins over a render still waiting for the server

async function render() {
  const mine = ++renders;
  if (cleanup) { try { cleanup(); } catch { /* page already gone */ } cleanup = null; }
  const route = location.hash.replace(/^#\/?/, "").split("/").map(decode);
  if (!api.getKey() || route[0] === "signin") {
    if (api.getKey() && route[0] === "signin" && me) { location.hash = "#/projects"; return; }
    document.title = "Sign in · projecthub";
    clear(root, signInPage(notice, (who) => {
      signedIn(who);
      // a deep link opened before signing in (e.g. #/p/<id>/files) is where we go next
      if (!location.hash || location.hash.startsWith("#/signin")) location.hash = "#/projects";
      else render();
    }));
    return;
  }
  if (!me) {
    clear(root, h("main", {}, h("p", { class: "status busy" }, "Checking your API key…")));
    try {
      const who = await api.get("/api/v3/me");
      if (mine !== renders) return;
      me = who;
    } catch (err) {
      if (mine !== renders) return;
      if (err.status === 401) return;   // whenSignedOut already showed the sign-in page
      clear(root, h("main", {}, h("p", { class: "status error" }, "Cannot check your key: " + err.message),
        h("button", { onclick: render }, "Try again")));
      return;
    }
  }
  const main = h("main", { id: "main", tabindex: "-1" });
  clear(root, h("a", { class: "skip", href: "#main", onclick: (e) => { e.preventDefault(); main.focus(); } },
    "Skip to content"), header(), main);
  const [page, ...rest] = route;
  if (page === "p" && rest[0]) cleanup = projectPage(main, rest[0], rest.slice(1), me);
  else if (page === "keys") cleanup = keysPage(main, me);
  else if (page === "admin") cleanup = adminPage(main, me);
  else if (!me.account && me.project_id) {
    // a project key sees only its project (it may not list projects)
    history.replaceState(null, "", "#/p/" + me.project_id);
    cleanup = projectPage(main, me.project_id, [], me);
  } else {
    if (page !== "projects") history.replaceState(null, "", "#/projects");
    cleanup = projectsPage(main, me);
  }
}

// A key revoked while the page sits idle: notice within a minute, not at the next click.
setInterval(() => { if (api.getKey() && me) api.get("/api/v3/me").catch(() => {}); }, 30000);

window.addEventListener("hashchange", render);
render();
