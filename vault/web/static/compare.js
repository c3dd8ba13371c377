// The comparison page (same origin, no inline code). Side by side, each photo's box grows
// in proportion to its width/height ratio, so both come out at the same height whatever
// their shapes; the slider stacks them at one height and clips the first to the range's value.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const pair = document.getElementById("pair");
  if (!pair) return;
  const figures = Array.from(pair.querySelectorAll("figure"));
  const ratios = figures.map((f) => Number(f.dataset.width) / Number(f.dataset.height));
  const sum = ratios.reduce((a, b) => a + b, 0);
  figures.forEach((f, i) => { f.style.flexGrow = String(ratios[i]); });
  // at most 70% of the window's height: cap the row's width to match
  pair.style.maxWidth = `calc(${sum} * 70vh)`;
  pair.classList.add("fit");

  const view = document.getElementById("slider-view");
  const modes = document.getElementById("modes");
  if (!view || !modes) return;
  const stage = document.getElementById("slider-stage");
  const over = document.getElementById("slider-over");
  const split = document.getElementById("slider-split");
  const range = document.getElementById("slider-position");
  const widest = Math.max(Number(stage.dataset.ratioA), Number(stage.dataset.ratioB));
  stage.style.aspectRatio = String(widest);
  stage.style.maxWidth = `calc(${widest} * 70vh)`;
  const move = () => {
    const v = Number(range.value);
    over.style.clipPath = `inset(0 ${100 - v}% 0 0)`;
    split.style.left = `${v}%`;
    range.setAttribute("aria-valuetext", `${v}% of the first photo`);
  };
  range.addEventListener("input", move);
  move();
  modes.hidden = false;
  modes.addEventListener("change", (e) => {
    const slider = e.target.value === "slider";
    view.hidden = !slider;
    pair.hidden = slider;
  });
});
