// /api/v3/docs: Swagger UI over the document next to this page (no inline script: the
// page's Content-Security-Policy allows scripts from this server only).
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",          // /api/v3/openapi.json, relative to /api/v3/docs
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,           // never call swagger.io: the page works offline
    displayRequestDuration: true,
    tryItOutEnabled: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
