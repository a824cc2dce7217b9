// Tiny DOM helpers: every text goes in as a text node (never innerHTML), so output from a
// project (file names, job output, kernel errors) cannot become markup in the page.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// A status line that says what is happening, in words: "working", an error, or done.
export function statusLine() {
  const el = h("p", { class: "status", role: "status", "aria-live": "polite" });
  let timer = null;
  const set = (cls, text) => { clearTimeout(timer); el.className = "status " + cls; el.textContent = text; };
  return {
    el,
    busy: (text) => set("busy", text),
    ok: (text) => { set("ok", text); timer = setTimeout(() => set("", ""), 4000); },
    error: (err) => set("error", typeof err === "string" ? err : (err && err.message) || String(err)),
    clear: () => set("", ""),
  };
}

// Run an async action behind a button: disabled meanwhile, progress and errors said in words.
export async function act(status, busyText, fn, button) {
  if (button) button.disabled = true;
  status.busy(busyText);
  try {
    const result = await fn();
    status.clear();
    return result;
  } catch (err) {
    if (err && err.name === "AbortError") return undefined;
    status.error(err);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

export function bytes(n) {
  if (n === null || n === undefined) return "unlimited";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

// ANSI colour codes in kernel tracebacks and job output: shown as plain text
export function stripAnsi(text) {
  return String(text).replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]/g, "");
}

// A destructive action asks first, in the page (not window.confirm, which blocks the page
// and which automation and some browsers dismiss): the button becomes the question with
// "yes" and "Cancel"; Escape cancels.  onYes(yesButton) runs the action.
export function confirmButton(label, question, yesLabel, onYes, cls = "danger small") {
  const wrap = h("span", { class: "confirm" });
  const button = h("button", { class: cls, type: "button" }, label);
  const restore = () => { clear(wrap, button); button.focus(); };
  button.addEventListener("click", () => {
    const yes = h("button", { class: "danger small", type: "button" }, yesLabel);
    const no = h("button", { class: "secondary small", type: "button", onclick: restore }, "Cancel");
    yes.addEventListener("click", async () => {
      no.disabled = true;
      await onYes(yes);
      if (wrap.isConnected) clear(wrap, button);
    });
    wrap.addEventListener("keydown", (e) => { if (e.key === "Escape") restore(); });
    clear(wrap, h("span", { class: "question", role: "alert" }, question, " "), yes, no);
    yes.focus();
  });
  wrap.append(button);
  return wrap;
}
