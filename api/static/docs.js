// Starts Swagger UI on the docs page (api/docs.py). A file of its own rather than an inline script, so
// that the page's Content-Security-Policy can refuse inline scripts and every host but this one.
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    // The badge would fetch from validator.swagger.io: no request leaves for another host.
    validatorUrl: null,
    displayOperationId: true,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0,
    tryItOutEnabled: false,
    persistAuthorization: false,
  });
})();
