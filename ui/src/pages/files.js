// Files: browse, upload (drag and drop or a picker, with a progress bar), download,
// new file/folder, rename, delete, edit text in a code editor (ETag + If-Match on save),
// view images.  Every file call is the v3 files API with the Bearer header.
import { h, clear, statusLine, act, bytes, when, confirmButton } from "../dom.js";
import * as api from "../api.js";

const IMAGE = /\.(png|jpe?g|gif|webp|bmp|svg|ico|avif)$/i;
const MAX_EDIT = 4 * 2 ** 20;

const join = (dir, name) => (dir ? dir.replace(/\/$/, "") + "/" + name : name);

export function filesTab(body, { projectId, base }, dir) {
  dir = (dir || "").replace(/^\/+|\/+$/g, "");
  const url = (path) => `/api/v3/projects/${projectId}/files/${api.filePath(path)}`;
  const status = statusLine();
  const listing = h("div", { class: "list", "aria-busy": "true" }, h("p", { class: "status busy" }, "Loading…"));
  const viewer = h("section", { class: "viewer", "aria-label": "open file" });
  const progress = h("div", { class: "uploads" });
  let editor = null;
  let objectUrl = null;
  const controller = new AbortController();

  const crumbs = [h("a", { href: `${base}/files` }, "home")];
  let acc = "";
  for (const part of dir ? dir.split("/") : []) {
    acc = join(acc, part);
    crumbs.push(" / ", h("a", { href: `${base}/files/${api.filePath(acc)}` }, part));
  }

  async function refresh() {
    try {
      const out = await api.get(url(dir) + "?list", { signal: controller.signal });
      listing.setAttribute("aria-busy", "false");
      const rows = out.entries.map((e) => entryRow(e));
      clear(listing, rows.length ? h("table", { class: "table files" },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Size"), h("th", { class: "wide" }, "Modified"), h("th", {}, "Actions"))),
        h("tbody", {}, rows)) : h("p", { class: "empty" }, "This folder is empty. Drop files here to upload them."),
        out.truncated ? h("p", { class: "hint" }, "Only the first 10,000 entries are shown.") : null);
    } catch (err) {
      if (err.name === "AbortError" || err.status === 401) return;
      clear(listing, h("p", { class: "status error" }, "Cannot list this folder: " + err.message));
    }
  }

  function entryRow(e) {
    const path = join(dir, e.name);
    const isDir = e.type === "dir";
    const name = isDir
      ? h("a", { href: `${base}/files/${api.filePath(path)}` }, e.name + "/")
      : h("button", { class: "link", onclick: () => open(path, e) }, e.name);
    const download = h("button", { class: "secondary small", title: isDir ? "as a .tar.gz archive" : null,
                                   onclick: () => downloadFile(path, e.name, download, isDir) }, "Download");
    const nameCell = h("td", {}, name);
    // rename in place: the name becomes a field (Enter renames, Escape cancels); a path with
    // "/" moves it into another folder of the project
    const rename = h("button", { class: "secondary small", onclick: () => {
      const field = h("input", { value: path, "aria-label": `new name or path for ${path}`, class: "grow" });
      const go = h("button", { class: "small", type: "submit" }, "Rename");
      const cancel = h("button", { class: "secondary small", type: "button", onclick: () => { clear(nameCell, name); rename.focus(); } }, "Cancel");
      const form = h("form", { class: "row", onsubmit: async (ev) => {
        ev.preventDefault();
        const to = field.value.trim();
        if (!to || to === path) { clear(nameCell, name); return; }
        const ok = await act(status, "Renaming…", () => api.post(`/api/v3/projects/${projectId}/files:move`, { from: path, to }), go);
        if (ok) { status.ok(`Renamed to ${to}.`); refresh(); }
      } }, field, go, cancel);
      form.addEventListener("keydown", (ev) => { if (ev.key === "Escape") cancel.click(); });
      clear(nameCell, form);
      field.focus();
      field.setSelectionRange(path.length - e.name.length, path.length);
    } }, "Rename");
    const remove = confirmButton("Delete", `Delete ${isDir ? "this folder and everything in it" : "this file"}?`, "Yes, delete",
      async (yes) => {
        const ok = await act(status, "Deleting…", () => api.del(url(path) + (isDir ? "?recursive=true" : "")), yes);
        if (ok !== undefined) { status.ok(`Deleted ${path}.`); refresh(); }
      });
    return h("tr", { class: isDir ? "dir" : null }, nameCell,
      h("td", {}, isDir ? "" : bytes(e.size)), h("td", { class: "wide" }, when(e.mtime)),
      h("td", { class: "actions" }, download, rename, remove));
  }

  async function fetchBlob(path, archive = false) {
    const where = archive ? `/api/v3/projects/${projectId}/archive/${api.filePath(path)}` : url(path);
    const response = await api.call("GET", where, { raw: true, signal: controller.signal });
    return { blob: await response.blob(), etag: response.headers.get("etag") };
  }

  // fetched with the key (a plain link could not carry it), then handed to the browser to save
  async function downloadFile(path, name, button, isDir = false) {
    const got = await act(status, isDir ? `Packing and downloading ${name}…` : `Downloading ${name}…`,
      () => fetchBlob(path, isDir), button);
    if (!got) return;
    if (isDir) name += ".tar.gz";
    // an opaque type: a project's .html saved from this page can never render as this origin
    const link = h("a", { href: URL.createObjectURL(new Blob([got.blob], { type: "application/octet-stream" })), download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    status.ok(`Downloaded ${name}.`);
  }

  function closeViewer() {
    if (editor) { editor.destroy(); editor = null; }
    if (objectUrl) { URL.revokeObjectURL(objectUrl); objectUrl = null; }
    clear(viewer);
  }

  async function open(path, entry) {
    closeViewer();
    const close = h("button", { class: "secondary small", onclick: closeViewer }, "Close");
    if (IMAGE.test(path)) {
      const got = await act(status, `Opening ${path}…`, () => fetchBlob(path));
      if (!got) return;
      const type = /\.svg$/i.test(path) ? "image/svg+xml" : got.blob.type;
      objectUrl = URL.createObjectURL(new Blob([got.blob], { type }));
      clear(viewer, h("div", { class: "row" }, h("h2", {}, path), close), h("img", { class: "preview", src: objectUrl, alt: path }));
      return;
    }
    if (entry.size > MAX_EDIT) {
      clear(viewer, h("p", { class: "status error" }, `${path} is ${bytes(entry.size)}: too big to edit here; download it instead.`));
      return;
    }
    const got = await act(status, `Opening ${path}…`, () => fetchBlob(path));
    if (!got) return;
    let text;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(await got.blob.arrayBuffer());
    } catch {
      clear(viewer, h("p", { class: "status error" }, `${path} is not UTF-8 text: download it instead.`));
      return;
    }
    let etag = got.etag;
    const saveStatus = statusLine();
    const save = h("button", {}, "Save");
    const host = h("div", { class: "editor" });
    clear(viewer, h("div", { class: "row" }, h("h2", {}, path), save, close,
      h("span", { class: "hint" }, "Ctrl-S saves")), saveStatus.el, host);
    saveStatus.busy("Loading the editor…");
    const { createEditor } = await import("../editor.js");
    saveStatus.clear();
    async function doSave(force = false) {
      const out = await act(saveStatus, `Saving ${path}…`, () => api.upload(url(path), new Blob([editor.text()]),
        () => {}, { ifMatch: force ? undefined : etag }), save);
      if (out) { etag = out.etag; saveStatus.ok(`Saved ${path} (${bytes(out.size)}).`); refresh(); }
      else if (saveStatus.el.textContent.includes("changed")) {
        saveStatus.error(`${path} changed on disk since you opened it. Save again to overwrite it, or close and reopen to see the new version.`);
        etag = undefined;   // the next Save overwrites, on purpose
      }
    }
    editor = createEditor(host, text, path, () => doSave());
    save.addEventListener("click", () => doSave());
    editor.focus();
  }

  // uploads: a picker, or files dropped anywhere on this tab
  async function uploadFiles(files) {
    for (const file of files) {
      const bar = h("progress", { max: 100, value: 0, "aria-label": `upload of ${file.name}` });
      const label = h("span", {}, `${file.name}: waiting`);
      const stop = new AbortController();
      const cancel = h("button", { class: "secondary small", onclick: () => stop.abort() }, "Cancel");
      const line = h("div", { class: "upload" }, label, bar, cancel);
      progress.append(line);
      controller.signal.addEventListener("abort", () => stop.abort(), { once: true });
      try {
        label.textContent = `${file.name}: 0 %`;
        await api.upload(url(join(dir, file.name)), file, (done, total) => {
          const pct = Math.floor((done / total) * 100);
          bar.value = pct;
          label.textContent = `${file.name}: ${pct} % of ${bytes(total)}`;
        }, { signal: stop.signal });
        bar.value = 100;
        label.textContent = `${file.name}: uploaded (${bytes(file.size)})`;
        line.classList.add("done");
        cancel.remove();
        setTimeout(() => line.remove(), 5000);
      } catch (err) {
        label.textContent = `${file.name}: ${err.message}`;
        line.classList.add("failed");
        cancel.textContent = "Dismiss";
        cancel.onclick = () => line.remove();
      }
      refresh();
    }
  }
  const picker = h("input", { type: "file", multiple: true, id: "upload", class: "sr-only",
                              onchange: () => { uploadFiles([...picker.files]); picker.value = ""; } });
  const drop = h("div", { class: "dropzone", tabindex: "0", role: "button",
                          "aria-label": "Upload files: drop them here or press Enter to pick",
                          onclick: () => picker.click(),
                          onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); picker.click(); } } },
    "Drop files here to upload, or click to pick them");
  body.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  body.addEventListener("dragleave", () => drop.classList.remove("over"));
  body.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) uploadFiles([...e.dataTransfer.files]);
  });

  const newName = h("input", { id: "new-name", placeholder: "name", required: true });
  const newFile = h("button", { type: "submit", value: "file" }, "New file");
  const newDir = h("button", { type: "submit", value: "dir", class: "secondary" }, "New folder");
  const createForm = h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    const name = newName.value.trim();
    const path = join(dir, name);
    const kind = e.submitter && e.submitter.value;
    const ok = kind === "dir"
      ? await act(status, "Creating the folder…", () => api.post(`/api/v3/projects/${projectId}/exec`,
        { command: "mkdir", args: ["-p", "--", path], timeout: 30 }).then((r) => {
          if (r.exit_code !== 0) throw new Error(r.stderr || "mkdir failed");
          return r;
        }), newDir)
      : await act(status, "Creating the file…", () => api.upload(url(path), new Blob([]), () => {}), newFile);
    if (ok) { newName.value = ""; status.ok(`Created ${path}.`); refresh(); if (kind !== "dir") open(path, { size: 0 }); }
  } }, h("label", { for: "new-name", class: "sr-only" }, "New file or folder name"), newName, newFile, newDir);

  clear(body, h("p", { class: "crumbs" }, crumbs), createForm, drop, picker, progress, status.el, listing, viewer);
  refresh();
  return () => { controller.abort(); closeViewer(); };
}
