// The staff web app's script (same origin, no inline code): the receipt download and the
// progress of exports and retention sweeps. Everything else is plain forms.
"use strict";

// Ask `url` every second while `running(body)`; `show(body)` each answer; reload the page
// (the server renders the outcome) once it has stopped.
function follow(url, running, show) {
  const poll = async () => {
    const resp = await fetch(url, { credentials: "same-origin" });
    if (!resp.ok) return;
    const body = await resp.json();
    show(body);
    if (running(body)) setTimeout(poll, 1000);
    else window.location.reload();
  };
  setTimeout(poll, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const link = document.getElementById("receipt-download");
  const json = document.getElementById("receipt-json");
  if (link && json) {
    link.href = URL.createObjectURL(new Blob([json.textContent], { type: "application/json" }));
    link.download = link.dataset.filename;
  }
  const status = document.getElementById("export-status");
  const building = (body) => body.status === "pending" || body.status === "running";
  if (status && building({ status: status.dataset.state })) {
    const bar = document.getElementById("export-progress");
    follow(`/v1/exports/${status.dataset.export}`, building, (body) => {
      bar.value = body.progress;
      bar.textContent = `${Math.round(body.progress * 100)}%`;
      status.textContent = `Status: ${body.status}`;
    });
  }
  const sweep = document.getElementById("sweep-progress");
  const sweeping = (body) => body.status === "erasing" || body.status === "cleaning_up";
  if (sweep && sweeping({ status: sweep.dataset.state })) {
    follow(`/v1/retention/sweeps/${sweep.dataset.sweep}`, sweeping, (body) => {
      // clean-ups finished of erasures made, as the words under the bar say
      sweep.max = Math.max(body.erased, 1);
      sweep.value = body.cleaned_up + body.failed;
      sweep.textContent = `${sweep.value} of ${body.erased}`;
      document.getElementById("sweep-cleaned").textContent = body.cleaned_up;
      document.getElementById("sweep-erased").textContent = body.erased;
    });
  }
});
