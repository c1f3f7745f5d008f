// Swagger UI on Orchestra's own OpenAPI document (a file: the pages allow no inline script).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger");
  window.SwaggerUIBundle({ url: root.dataset.url, domNode: root, deepLinking: true });
});
