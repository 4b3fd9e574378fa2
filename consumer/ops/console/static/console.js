// Conveyor console: small enhancements over pages that work without them.
// - the overview's live part is fetched again every refresh and swapped in (no page reload);
// - keyboard: "g o" overview, "g d" dead letters, "g j" jobs, j/k move between rows, Enter opens, "/" filters.
"use strict";

function refreshLive() {
  const live = document.getElementById("live");
  const every = Number(document.body.dataset.refreshMs || 0);
  if (!live || !every || live.querySelector("[data-final]")) return;
  const tick = async () => {
    try {
      const response = await fetch(live.dataset.liveUrl, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (response.ok) {
        const html = await response.text();
        const doc = new DOMParser().parseFromString(html, "text/html");
        const fresh = doc.body;
        live.replaceChildren(...fresh.childNodes);
        live.dataset.updated = String(Date.now());
        if (live.querySelector("[data-final]")) return; // a finished replay: nothing will change
      }
    } catch (error) {
      // a console restart or a network blip: try again next time
    }
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}

function rows() {
  return Array.from(document.querySelectorAll("table.rows tbody tr")).filter((row) => row.querySelector("a.row-link"));
}

function moveRow(step) {
  const all = rows();
  if (!all.length) return;
  let index = all.findIndex((row) => row.classList.contains("current"));
  if (index >= 0) all[index].classList.remove("current");
  index = Math.min(all.length - 1, Math.max(0, index + step));
  all[index].classList.add("current");
  all[index].querySelector("a.row-link").focus();
}

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

function keyboard() {
  let pendingG = false;
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    if (pendingG) {
      pendingG = false;
      if (event.key === "o") { window.location.assign("/"); return; }
      if (event.key === "d") { window.location.assign("/dead-letters"); return; }
      if (event.key === "j") { window.location.assign("/jobs"); return; }
    }
    if (event.key === "g") { pendingG = true; return; }
    if (event.key === "j") { moveRow(1); event.preventDefault(); }
    else if (event.key === "k") { moveRow(-1); event.preventDefault(); }
    else if (event.key === "/") {
      const filter = document.getElementById("f-reason");
      if (filter) { filter.focus(); event.preventDefault(); }
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  refreshLive();
  keyboard();
});
