// The staff web app's only script (same origin, no inline code): the receipt download and
// the export progress. Everything else is plain forms.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const link = document.getElementById("receipt-download");
  const json = document.getElementById("receipt-json");
  if (link && json) {
    link.href = URL.createObjectURL(new Blob([json.textContent], { type: "application/json" }));
    link.download = link.dataset.filename;
  }
  const status = document.getElementById("export-status");
  if (status && (status.dataset.state === "pending" || status.dataset.state === "running")) {
    const bar = document.getElementById("export-progress");
    const poll = async () => {
      const resp = await fetch(`/v1/exports/${status.dataset.export}`, { credentials: "same-origin" });
      if (!resp.ok) return;
      const body = await resp.json();
      bar.value = body.progress;
      status.textContent = `Status: ${body.status}`;
      if (body.status === "pending" || body.status === "running") setTimeout(poll, 1000);
      else window.location.reload();
    };
    setTimeout(poll, 1000);
  }
});
