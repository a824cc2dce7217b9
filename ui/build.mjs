// Bundle the web UI into projecthub/api/static/ui/ (committed: nothing is built at install
// time).  Run through scripts/ui_build.sh.  ES modules with code splitting: the terminal
// (xterm.js) and the editor (CodeMirror) load only when their page opens.  File names carry
// a content hash, so the server can let browsers cache them for good.
import * as esbuild from "esbuild";
import { readFileSync, writeFileSync, rmSync, mkdirSync, copyFileSync } from "node:fs";
import { basename } from "node:path";

const out = new URL("../projecthub/api/static/ui/", import.meta.url).pathname;
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const result = await esbuild.build({
  entryPoints: ["src/main.js"],
  bundle: true, splitting: true, format: "esm", minify: true, sourcemap: false,
  target: ["chrome100", "firefox100", "safari15"],
  outdir: out, entryNames: "[name]-[hash]", chunkNames: "chunk-[hash]", assetNames: "[name]-[hash]",
  metafile: true, legalComments: "eof", logLevel: "warning",
});
const names = {};
for (const [file, meta] of Object.entries(result.metafile.outputs)) {
  if (meta.entryPoint === "src/main.js") names["main.js"] = basename(file);
  if (file.endsWith(".css") && basename(file).startsWith("main-")) names["main.css"] = basename(file);
}
let html = readFileSync("src/index.html", "utf8");
html = html.replace(/\{\{(main\.(?:js|css))\}\}/g, (_, name) => {
  if (!names[name]) throw new Error("no output for " + name);
  return names[name];
});
writeFileSync(out + "index.html", html);
copyFileSync("src/icon.svg", out + "icon.svg");
for (const [file, meta] of Object.entries(result.metafile.outputs)) console.log(`${basename(file)}\t${meta.bytes}`);
