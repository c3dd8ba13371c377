// The redaction review page's box editor (same origin, no inline code). Boxes are kept in
// the photo's displayed pixels ([x, y, w, h], as the API stores them) and drawn scaled to
// the image as shown. Pointer events cover mouse, touch and pen; the keyboard adds, moves,
// resizes and deletes. Save is PUT /v1/media/{id}/redaction, approve is POST .../approve
// with the digest of the preview the reviewer saw; both carry the session's CSRF header.
// The preview is the full-resolution rendition: the reviewer zooms it (buttons, or + − 1 0
// on the photo) up to several screen pixels per photo pixel, and scrolls it, so that a
// face of a few dozen pixels in a large photo is seen at its real size or larger.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("redaction");
  if (!root) return;
  const stage = document.getElementById("stage");
  const img = document.getElementById("preview");
  const list = document.getElementById("box-list");
  const status = document.getElementById("editor-status");
  const saveButton = document.getElementById("save-boxes");
  const deleteButton = document.getElementById("delete-box");
  const approveButton = document.getElementById("approve");
  const W = Number(root.dataset.width), H = Number(root.dataset.height), media = root.dataset.media;
  let digest = root.dataset.digest;
  let boxes = JSON.parse(root.dataset.boxes);
  let chosen = -1, dirty = false, drag = null;
  let zoom = null; // null: fitted to the page; else screen px per photo px
  const MIN = 4, MAX_ZOOM = 8;
  const viewport = document.getElementById("viewport");
  const zoomLevel = document.getElementById("zoom-level");

  const scale = () => (img.clientWidth || W) / W;
  const clamp = (b) => {
    let [x, y, w, h] = b.map(Math.round);
    w = Math.max(MIN, Math.min(w, W)); h = Math.max(MIN, Math.min(h, H));
    x = Math.max(0, Math.min(x, W - w)); y = Math.max(0, Math.min(y, H - h));
    return [x, y, w, h];
  };
  const say = (text) => { status.textContent = text; };
  const changed = () => {
    dirty = true;
    saveButton.disabled = false;
    approveButton.disabled = true;
    say("Unsaved changes: save the boxes to see the new preview.");
    draw();
  };
  const choose = (i, focus) => {
    chosen = i;
    deleteButton.disabled = chosen < 0;
    draw();
    if (focus && chosen >= 0) stage.querySelector(`[data-index="${chosen}"]`).focus();
  };

  function draw() {
    stage.querySelectorAll(".box").forEach((el) => el.remove());
    list.replaceChildren();
    const s = scale();
    boxes.forEach((b, i) => {
      const [x, y, w, h] = b;
      const el = document.createElement("div");
      el.className = "box" + (i === chosen ? " chosen" : "");
      el.dataset.index = String(i);
      el.tabIndex = 0;
      el.setAttribute("role", "button");
      el.setAttribute("aria-pressed", String(i === chosen));
      el.setAttribute("aria-label", `Box ${i + 1}: x ${x}, y ${y}, ${w} by ${h} pixels`);
      Object.assign(el.style, { left: `${x * s}px`, top: `${y * s}px`, width: `${w * s}px`, height: `${h * s}px` });
      const handle = document.createElement("span");
      handle.className = "handle";
      handle.dataset.handle = "1";
      el.append(handle);
      stage.append(el);
      const li = document.createElement("li");
      li.textContent = `x ${x}, y ${y}, ${w} × ${h} px`;
      list.append(li);
    });
  }

  const point = (event) => {
    const r = img.getBoundingClientRect(), s = scale();
    return [(event.clientX - r.left) / s, (event.clientY - r.top) / s];
  };

  stage.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    const [px, py] = point(event);
    const target = event.target.closest(".box");
    if (target) {
      const i = Number(target.dataset.index);
      choose(i, false);
      drag = { mode: event.target.dataset.handle ? "resize" : "move", i, start: [px, py], orig: boxes[i].slice() };
    } else {
      boxes.push(clamp([px, py, MIN, MIN]));
      choose(boxes.length - 1, false);
      drag = { mode: "draw", i: chosen, start: [px, py], orig: boxes[chosen].slice() };
    }
    stage.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  stage.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const [px, py] = point(event);
    const [dx, dy] = [px - drag.start[0], py - drag.start[1]];
    const [x, y, w, h] = drag.orig;
    if (drag.mode === "move") boxes[drag.i] = clamp([x + dx, y + dy, w, h]);
    else if (drag.mode === "resize") boxes[drag.i] = clamp([x, y, Math.min(w + dx, W - x), Math.min(h + dy, H - y)]);
    else {
      const [sx, sy] = drag.start;
      const x0 = Math.max(0, Math.min(sx, px)), y0 = Math.max(0, Math.min(sy, py));
      const x1 = Math.min(W, Math.max(sx, px)), y1 = Math.min(H, Math.max(sy, py));
      boxes[drag.i] = clamp([x0, y0, x1 - x0, y1 - y0]);
    }
    draw();
  });
  const end = (event) => {
    if (!drag) return;
    drag = null;
    if (stage.hasPointerCapture(event.pointerId)) stage.releasePointerCapture(event.pointerId);
    changed();
  };
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);

  stage.addEventListener("keydown", (event) => {
    const target = event.target.closest(".box");
    if (!target) return;
    const i = Number(target.dataset.index);
    const step = event.shiftKey ? 10 : 1;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (event.key in moves) {
      const [dx, dy] = moves[event.key];
      const [x, y, w, h] = boxes[i];
      boxes[i] = clamp(event.altKey ? [x, y, w + dx, h + dy] : [x + dx, y + dy, w, h]);
      chosen = i;
      changed();
      choose(i, true);
      event.preventDefault();
    } else if (event.key === "Delete" || event.key === "Backspace") {
      boxes.splice(i, 1);
      chosen = -1;
      changed();
      choose(Math.min(i, boxes.length - 1), true);
      event.preventDefault();
    } else if (event.key === "Enter" || event.key === " ") {
      choose(i, true);
      event.preventDefault();
    }
  });

  document.getElementById("add-box").addEventListener("click", () => {
    const w = Math.max(MIN, Math.round(W / 5)), h = Math.max(MIN, Math.round(H / 5));
    boxes.push(clamp([(W - w) / 2, (H - h) / 2, w, h]));
    changed();
    choose(boxes.length - 1, true);
  });
  deleteButton.addEventListener("click", () => {
    if (chosen < 0) return;
    boxes.splice(chosen, 1);
    changed();
    choose(-1, false);
  });

  const send = (method, path, body) => fetch(path, {
    method, credentials: "same-origin", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-CSRF-Token": root.dataset.csrf },
  });

  saveButton.addEventListener("click", async () => {
    saveButton.disabled = true;
    say("Saving…");
    const resp = await send("PUT", `/v1/media/${media}/redaction`, { boxes: boxes.map(clamp) });
    const body = await resp.json();
    if (!resp.ok) {
      saveButton.disabled = false;
      say(`Not saved: ${body.detail || resp.status}`);
      return;
    }
    boxes = body.boxes;
    digest = body.digest;
    dirty = false;
    root.dataset.state = body.state;
    document.getElementById("redaction-state").textContent = body.state;
    document.getElementById("redaction-source").textContent = body.source;
    img.addEventListener("load", () => {
      approveButton.disabled = false;
      say("Saved. The preview shows the file as it would now be released.");
      root.dataset.saved = digest;
      draw();
    }, { once: true });
    img.src = body.preview_url;
    draw();
  });

  approveButton.addEventListener("click", async () => {
    if (dirty) return;
    approveButton.disabled = true;
    say("Approving…");
    const resp = await send("POST", `/v1/media/${media}/redaction/approve`, { digest });
    const body = await resp.json();
    if (!resp.ok) {
      approveButton.disabled = false;
      say(`Not approved: ${body.detail || resp.status}`);
      return;
    }
    window.location.reload();
  });

  // -- zoom: the stage is drawn at `zoom` screen px per photo px inside a scrolling viewport
  const fitted = () => Math.min(1, (viewport.clientWidth || W) / W);
  function setZoom(next) {
    const before = scale();
    const cx = (viewport.scrollLeft + viewport.clientWidth / 2) / before;
    const cy = (viewport.scrollTop + viewport.clientHeight / 2) / before;
    zoom = next === null || next <= fitted() ? null : Math.min(MAX_ZOOM, next);
    viewport.classList.toggle("zoomed", zoom !== null);
    img.style.width = zoom === null ? "" : `${Math.round(W * zoom)}px`;
    const now = scale();
    viewport.scrollLeft = cx * now - viewport.clientWidth / 2;
    viewport.scrollTop = cy * now - viewport.clientHeight / 2;
    zoomLevel.textContent = zoom === null ? "Fitted to the page" : `${Math.round(zoom * 100)} % (photo pixels shown ${zoom >= 1 ? "at least" : "below"} their real size)`;
    draw();
  }
  document.getElementById("zoom-in").addEventListener("click", () => setZoom(scale() * 2));
  document.getElementById("zoom-out").addEventListener("click", () => setZoom(scale() / 2));
  document.getElementById("zoom-actual").addEventListener("click", () => setZoom(1));
  document.getElementById("zoom-fit").addEventListener("click", () => setZoom(null));
  viewport.addEventListener("keydown", (event) => {
    if (event.target.closest(".box")) return; // the boxes' own keys
    const keys = { "+": () => scale() * 2, "=": () => scale() * 2, "-": () => scale() / 2, "1": () => 1, "0": () => null };
    if (event.key in keys && !event.ctrlKey && !event.metaKey) {
      setZoom(keys[event.key]());
      event.preventDefault();
    }
  });

  window.addEventListener("resize", draw);
  if (img.complete) draw(); else img.addEventListener("load", draw, { once: true });
  draw();
});
