/* /api/v1/docs: Swagger UI (vendored, static/vendor/swagger-ui) over the service's OpenAPI document. */
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (!root || !window.SwaggerUIBundle) { return; }
  window.SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 1,
    defaultModelExpandDepth: 2,
    tryItOutEnabled: false,
    validatorUrl: null  // never ask an outside validator about the document
  });
}());
