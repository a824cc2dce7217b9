// xterm.js writes its dynamic CSS into <style> elements, which a strict CSP
// (style-src 'self', no 'unsafe-inline') refuses.  While a terminal is created, hand it
// inert stand-ins whose text goes into constructable stylesheets instead (CSSOM, which
// the policy allows).  Only <style> creation is touched, and only inside withSafeStyles.
export function withSafeStyles(fn) {
  const original = Document.prototype.createElement;
  Document.prototype.createElement = function (tag, options) {
    if (String(tag).toLowerCase() !== "style") return original.call(this, tag, options);
    const doc = this;
    const el = original.call(this, "csp-style", options);   // unknown element: never styled or applied
    const sheet = new CSSStyleSheet();
    doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
    Object.defineProperty(el, "textContent", {
      get: () => [...sheet.cssRules].map((r) => r.cssText).join("\n"),
      set: (text) => sheet.replaceSync(String(text)),
    });
    const remove = el.remove.bind(el);
    el.remove = () => {
      doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
      remove();
    };
    return el;
  };
  try {
    return fn();
  } finally {
    Document.prototype.createElement = original;
  }
}
