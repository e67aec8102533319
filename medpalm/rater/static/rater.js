// Rater pages: image zoom, rank-by-drag or keyboard, error rows. No inline script (the CSP
// forbids it), no network calls besides the form submit and the images.
"use strict";

function setupZoom(viewer) {
  let zoom = 1;
  const images = viewer.querySelectorAll(".case-image");
  const apply = () => images.forEach((img) => { img.style.width = (zoom * 100) + "%"; });
  const by = (f) => { zoom = Math.min(8, Math.max(1, zoom * f)); apply(); };
  viewer.querySelector(".zoom-in").addEventListener("click", () => by(1.25));
  viewer.querySelector(".zoom-out").addEventListener("click", () => by(0.8));
  viewer.querySelector(".zoom-reset").addEventListener("click", () => { zoom = 1; apply(); });
  viewer.querySelectorAll(".frame").forEach((frame) => {
    frame.addEventListener("wheel", (e) => { e.preventDefault(); by(e.deltaY < 0 ? 1.1 : 1 / 1.1); });
    frame.addEventListener("keydown", (e) => {
      if (e.key === "+" || e.key === "=") { by(1.25); e.preventDefault(); }
      else if (e.key === "-") { by(0.8); e.preventDefault(); }
      else if (e.key === "0") { zoom = 1; apply(); e.preventDefault(); }
    });
  });
  apply();
}

function setupRanking(list) {
  const field = document.getElementById("ranking");
  const status = document.getElementById("rank-status");
  const cards = () => Array.from(list.querySelectorAll(".card"));
  const update = () => {
    cards().forEach((c, i) => { c.querySelector(".rank").textContent = (i + 1) + "."; });
    field.value = cards().map((c) => c.dataset.item).join(",");
  };
  list.addEventListener("keydown", (e) => {
    const card = e.target.closest(".card");
    if (!card) return;
    if (e.key === "ArrowUp" && card.previousElementSibling) {
      list.insertBefore(card, card.previousElementSibling);
    } else if (e.key === "ArrowDown" && card.nextElementSibling) {
      list.insertBefore(card.nextElementSibling, card);
    } else {
      return;
    }
    e.preventDefault();
    card.focus();
    update();
    status.textContent = "Findings " + card.dataset.item + " is now number " + (cards().indexOf(card) + 1);
  });
  let dragged = null;
  list.addEventListener("pointerdown", (e) => {
    const card = e.target.closest(".card");
    if (!card || e.button !== 0) return;
    dragged = card;
    card.classList.add("dragging");
    e.preventDefault();
  });
  document.addEventListener("pointermove", (e) => {
    if (!dragged) return;
    const over = document.elementFromPoint(e.clientX, e.clientY);
    const target = over && over.closest(".card");
    if (!target || target === dragged || target.parentNode !== list) return;
    const box = target.getBoundingClientRect();
    list.insertBefore(dragged, e.clientY < box.top + box.height / 2 ? target : target.nextElementSibling);
    update();
  });
  document.addEventListener("pointerup", () => {
    if (!dragged) return;
    dragged.classList.remove("dragging");
    dragged = null;
    update();
  });
  update();
}

function setupGrading(form) {
  const template = document.getElementById("error-row");
  form.querySelectorAll(".report").forEach((fieldset) => {
    const k = fieldset.dataset.report;
    const rows = fieldset.querySelector(".errors");
    fieldset.querySelector(".add-error").addEventListener("click", () => {
      const row = template.content.firstElementChild.cloneNode(true);
      row.querySelector("[data-field=type]").name = "err" + k + "_type";
      row.querySelector("[data-field=sig]").name = "err" + k + "_sig";
      row.querySelector(".remove-error").addEventListener("click", () => row.remove());
      rows.appendChild(row);
      row.querySelector("select").focus();
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".viewer").forEach(setupZoom);
  const list = document.getElementById("rank-list");
  if (list) setupRanking(list);
  const form = document.getElementById("answer");
  if (form && form.querySelector(".report")) setupGrading(form);
});
