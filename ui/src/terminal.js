// xterm.js and its fit addon, loaded only on the terminal tab.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { withSafeStyles } from "./csp-styles.js";

export function createTerminal(parent) {
  // styles are created both in the constructor and in open() (and on theme changes, which
  // this page never makes after open)
  return withSafeStyles(() => {
    const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000, convertEol: false,
                                fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
                                theme: { background: "#111827" } });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(parent);
    return { term, fit };
  });
}
