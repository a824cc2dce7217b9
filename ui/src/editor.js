// The code editor (CodeMirror 6), loaded only when a file is opened.  CodeMirror writes its
// styles into a <style> element, which the page's CSP refuses: its first view is made inside
// withSafeStyles (csp-styles.js), and later views reuse that per-document style set.
import { EditorView, basicSetup } from "codemirror";
import { keymap } from "@codemirror/view";
import { indentWithTab } from "@codemirror/commands";
import { python } from "@codemirror/lang-python";
import { javascript } from "@codemirror/lang-javascript";
import { markdown } from "@codemirror/lang-markdown";
import { json } from "@codemirror/lang-json";
import { withSafeStyles } from "./csp-styles.js";

function language(path) {
  if (/\.py$/i.test(path)) return [python()];
  if (/\.(m?js|jsx|ts|tsx)$/i.test(path)) return [javascript({ typescript: /\.tsx?$/i.test(path) })];
  if (/\.(md|markdown)$/i.test(path)) return [markdown()];
  if (/\.(json|ipynb)$/i.test(path)) return [json()];
  return [];
}

export function createEditor(parent, text, path, onSave) {
  const view = withSafeStyles(() => new EditorView({
    doc: text,
    parent,
    extensions: [
      basicSetup,
      // Tab indents; Escape then Tab leaves the editor (CodeMirror's keyboard-trap escape)
      keymap.of([indentWithTab, { key: "Mod-s", preventDefault: true, run: () => { onSave(); return true; } }]),
      ...language(path),
      EditorView.contentAttributes.of({ "aria-label": "contents of " + path }),
    ],
  }));
  return {
    text: () => view.state.doc.toString(),
    focus: () => view.focus(),
    destroy: () => view.destroy(),
  };
}
