// /docs: render this vault's /v1/openapi.json with Redoc. Its styles are <style> elements:
// Redoc gives them the nonce of this response's CSP (from the page's meta tag), so the
// page needs no 'unsafe-inline'.
"use strict";
const nonce = document.querySelector('meta[property="csp-nonce"]').getAttribute("content");
Redoc.init("/v1/openapi.json", { nonce: nonce, expandResponses: "200,201,202" }, document.getElementById("reference"));
