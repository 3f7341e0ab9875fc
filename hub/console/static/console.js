// Progressive enhancement only: every page reads the same without this file.
"use strict";

// Dates arrive in UTC; show them in the operator's time zone.
function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when)) {
      el.textContent = when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
      el.title = el.getAttribute("datetime");
    }
  }
}

// Rollout charts from the page's JSON (real telemetry aggregates; gaps are suppressed hours).
function charts(root) {
  const source = root.querySelector("#chart-data");
  if (!source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  const colors = ["#1565c0", "#8a5300", "#2e7d32", "#6a1b9a", "#c62828", "#00695c"];
  for (const box of root.querySelectorAll(".chart[data-chart]")) {
    if (box.dataset.drawn) continue;
    const metric = box.dataset.chart;
    const labels = Object.keys(data.series);
    const series = [{}].concat(labels.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 2, spanGaps: false })));
    const values = [data.hours].concat(labels.map((label) => data.series[label][metric]));
    const width = Math.max(280, Math.min(box.clientWidth || 600, 900));
    // Half a cell either side: one or two cells would otherwise stretch the axis over years.
    const pad = (data.step || 3600) / 2;
    const first = data.hours[0], last = data.hours[data.hours.length - 1];
    const scales = { x: { time: true, auto: false, range: [first - pad, last + pad] } };
    const points = { show: data.hours.length < 60 };
    for (const s of series.slice(1)) s.points = points;
    new uPlot({ title: box.dataset.title, width, height: 220, series, scales }, values, box);
    box.dataset.drawn = "1";
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", box.dataset.title + ": " + labels.join(" against "));
  }
}

function enhance(root) {
  localTimes(root);
  charts(root);
}

document.addEventListener("DOMContentLoaded", () => enhance(document));
document.addEventListener("htmx:afterSwap", (event) => enhance(event.target.parentNode || document));
document.addEventListener("htmx:after:swap", () => enhance(document));
