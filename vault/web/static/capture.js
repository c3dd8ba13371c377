// The capture page (same origin, no inline code): uploads with progress and automatic
// retry, and the live camera with the positioning guide.
//
// Every file gets one Idempotency-Key, made here once and sent again on each retry: when a
// connection drops after the vault stored the photo, the retry gets that photo back (200)
// instead of a second copy. Uploads go to POST /v1/patients/{id}/media with the session's
// CSRF header (the browser adds Origin), one at a time, so a phone on weak Wi-Fi is not
// sending several files at once.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("capture");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const list = $("uploads"), summary = $("upload-summary"), treatment = $("treatment"), phase = $("phase");
  const RETRIES = 6, TIMEOUT_MS = 120000;
  const queue = [];
  let busy = false, stored = 0, failed = 0;

  const newKey = () => {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  };
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const tell = () => {
    const left = queue.length + (busy ? 1 : 0);
    summary.textContent = `${stored} stored` + (failed ? `, ${failed} failed` : "") + (left ? `, ${left} to go` : "");
  };

  function row(name) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", `Upload of ${name}`);
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = "waiting";
    li.append(label, bar, state);
    list.append(li);
    return { li, bar, state };
  }

  // One attempt: resolves with {status, body}; status 0 when the connection failed.
  function send(item) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      const query = new URLSearchParams({ phase: item.phase });
      if (item.treatment) query.set("treatment_id", item.treatment);
      xhr.open("POST", `${root.dataset.upload}?${query}`);
      xhr.timeout = TIMEOUT_MS;
      xhr.setRequestHeader("X-CSRF-Token", root.dataset.csrf);
      xhr.setRequestHeader("Idempotency-Key", item.key);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) item.ui.bar.value = Math.round((e.loaded / e.total) * 100);
      };
      const done = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
        resolve({ status: xhr.status, body });
      };
      xhr.onload = done;
      xhr.onerror = done;
      xhr.ontimeout = done;
      xhr.onabort = done;
      const data = new FormData();
      data.append("file", item.file, item.file.name || "photo.jpg");
      xhr.send(data);
    });
  }

  // Worth another try: no answer at all, a timeout, or the vault asking to come back later.
  const transient = (status) => status === 0 || status === 408 || status === 429 || status >= 500;

  async function upload(item) {
    for (let attempt = 1; attempt <= RETRIES; attempt += 1) {
      item.ui.state.textContent = attempt === 1 ? "sending" : `sending again (try ${attempt} of ${RETRIES})`;
      item.ui.bar.value = 0;
      const { status, body } = await send(item);
      if (status === 200 || status === 201) {
        item.ui.bar.value = 100;
        item.ui.li.dataset.media = body && body.id ? body.id : "";
        item.ui.li.dataset.attempts = String(attempt);
        const tries = attempt > 1 ? ` (after ${attempt} tries, kept once)` : "";
        item.ui.state.textContent = (body && body.status === "processing" ? "stored, processing" : "stored") + tries;
        item.ui.li.classList.add("done");
        stored += 1;
        return;
      }
      if (!transient(status)) {
        const why = body && (body.detail || body.title) ? body.detail || body.title : `error ${status}`;
        item.ui.state.textContent = `refused: ${why}`;
        item.ui.li.classList.add("failed");
        failed += 1;
        return;
      }
      item.ui.state.textContent = "connection lost, trying again…";
      await wait(Math.min(1000 * 2 ** (attempt - 1), 15000));
    }
    item.ui.state.textContent = "not sent: check the connection and choose the file again";
    item.ui.li.classList.add("failed");
    failed += 1;
  }

  async function drain() {
    if (busy) return;
    busy = true;
    while (queue.length) {
      tell();
      await upload(queue.shift());
    }
    busy = false;
    tell();
  }

  // Phase and treatment are read when the file is chosen: what the person saw then.
  function add(file, name) {
    queue.push({ file, key: newKey(), phase: phase.value, treatment: treatment.value, ui: row(name || file.name) });
    tell();
    drain();
  }

  $("files").addEventListener("change", (e) => {
    for (const file of e.target.files) add(file);
    e.target.value = "";
  });

  // -- the camera and its positioning guide ---------------------------------------------
  const start = $("camera-start"), shoot = $("camera-shoot"), stop = $("camera-stop");
  const video = $("live"), guide = $("guide"), finder = $("viewfinder"), opacity = $("guide-opacity");
  const guideState = $("guide-state");
  let stream = null, shots = 0;
  let canCamera = Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);

  function showGuide() {
    if (!canCamera) {
      guideState.textContent = "";
      return;
    }
    const chosen = treatment.selectedOptions[0];
    const id = chosen ? chosen.dataset.guide : "";
    if (id) {
      guide.src = `/v1/media/${id}/thumbnail?size=1024`;
      guide.hidden = false;
      $("guide-controls").hidden = !stream;
      guideState.textContent = stream ? "Guide: the earlier photo of this area is shown over the camera."
        : "The camera will show the earlier photo of this area as a guide.";
    } else {
      guide.hidden = true;
      guide.removeAttribute("src");
      $("guide-controls").hidden = true;
      guideState.textContent = treatment.value ? "No earlier photo of this area: no guide."
        : "Choose the treatment: the camera then shows the earlier photo of its area as a guide.";
    }
  }
  const setOpacity = () => { guide.style.opacity = String(Number(opacity.value) / 100); };
  opacity.addEventListener("input", setOpacity);
  setOpacity();
  treatment.addEventListener("change", showGuide);
  showGuide();

  if (canCamera) {
    start.hidden = false;
  } else {
    $("camera-unavailable").hidden = false;
  }

  const stopCamera = () => {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.srcObject = null;
    finder.hidden = true;
    $("guide-controls").hidden = true;
    shoot.hidden = true;
    stop.hidden = true;
    start.hidden = false;
  };

  start.addEventListener("click", async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    } catch (_) {
      start.hidden = true;
      canCamera = false;
      showGuide();
      $("camera-unavailable").hidden = false;
      return;
    }
    video.srcObject = stream;
    await video.play();
    finder.hidden = false;
    shoot.hidden = false;
    stop.hidden = false;
    start.hidden = true;
    showGuide();
    shoot.focus();
  });
  stop.addEventListener("click", stopCamera);
  window.addEventListener("pagehide", stopCamera);

  shoot.addEventListener("click", () => {
    if (!stream || !video.videoWidth) return;
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      if (!blob) return;
      shots += 1;
      add(new File([blob], `camera-${shots}.jpg`, { type: "image/jpeg" }));
    }, "image/jpeg", 0.92);
  });
});
