// Fenji governance console: the plots, drawn as inline SVG at their container's width (no library).
// Series are told apart by colour and by class (series-0, series-1) so a test can count them.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const SERIES_COLOURS = ["#0b6e99", "#ef6c00", "#6a1b9a", "#2e7d32"];

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text != null) node.textContent = text;
  return node;
}

function chartFrame(host, height, label) {
  const width = Math.max(280, host.clientWidth || 480);
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label });
  host.replaceChildren(svg);
  return { svg, width };
}

function legend(svg, series, x, y) {
  series.forEach((s, i) => {
    const cx = x + i * 110;
    svg.append(svgEl("rect", { x: cx, y: y - 9, width: 10, height: 10, fill: SERIES_COLOURS[i % 4] }));
    svg.append(svgEl("text", { x: cx + 14, y, class: "legend" }, s.label));
  });
}

// The scale of a metric: [0, 1] for rates and areas, else from the data (with a little room).
function valueRange(values) {
  const finite = values.filter((v) => Number.isFinite(v));
  if (!finite.length) return [0, 1];
  const lo = Math.min(...finite), hi = Math.max(...finite);
  if (lo >= 0 && hi <= 1) return [0, 1];
  const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
  return [Math.min(0, lo - pad), hi + pad];
}

function yAxis(svg, [lo, hi], left, top, plotH, width) {
  for (let i = 0; i <= 4; i += 1) {
    const v = lo + ((hi - lo) * i) / 4, y = top + plotH - (plotH * i) / 4;
    svg.append(svgEl("line", { x1: left, x2: width - 8, y1: y, y2: y, class: "grid" }));
    svg.append(svgEl("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, (Math.round(v * 100) / 100).toString()));
  }
}

// Grouped bars: one group per category (a site), one bar per series (a version); a missing value
// (the site took no part in that version) leaves its slot empty.
function groupedBars(host, { categories, series, label }) {
  const height = 250, left = 44, top = 26, bottom = 40;
  const { svg, width } = chartFrame(host, height, label);
  const plotH = height - top - bottom;
  const range = valueRange(series.flatMap((s) => categories.map((c) => s.values[c])));
  yAxis(svg, range, left, top, plotH, width);
  const groupW = (width - left - 8) / Math.max(categories.length, 1);
  const barW = Math.min(38, (groupW - 14) / Math.max(series.length, 1));
  categories.forEach((category, ci) => {
    const x0 = left + ci * groupW + (groupW - barW * series.length) / 2;
    series.forEach((s, si) => {
      const v = s.values[category];
      if (!Number.isFinite(v)) return;
      const h = Math.max(1, ((v - range[0]) / (range[1] - range[0])) * plotH);
      const bar = svgEl("rect", { x: x0 + si * barW, y: top + plotH - h, width: barW - 3, height: h, rx: 2,
        fill: SERIES_COLOURS[si % 4], class: `bar series-${si}`, "data-category": category });
      bar.append(svgEl("title", {}, `${s.label} · ${category}: ${fmt(v)}`));
      svg.append(bar);
      svg.append(svgEl("text", { x: x0 + si * barW + (barW - 3) / 2, y: top + plotH - h - 3, "text-anchor": "middle",
        class: "value" }, fmt(v)));
    });
    svg.append(svgEl("text", { x: left + ci * groupW + groupW / 2, y: height - bottom + 16, "text-anchor": "middle",
      class: "category" }, category));
  });
  legend(svg, series, left, 14);
  return svg;
}

// Lines: one per series over rounds 1..n, a dot per round.
function lines(host, { series, label }) {
  const height = 230, left = 44, top = 26, bottom = 34;
  const { svg, width } = chartFrame(host, height, label);
  const plotH = height - top - bottom, plotW = width - left - 16;
  const rounds = series.flatMap((s) => s.points.map((p) => p.round));
  const maxRound = Math.max(1, ...rounds);
  const range = valueRange(series.flatMap((s) => s.points.map((p) => p.value)));
  yAxis(svg, range, left, top, plotH, width);
  const x = (r) => left + (maxRound === 1 ? plotW / 2 : ((r - 1) / (maxRound - 1)) * plotW);
  const y = (v) => top + plotH - ((v - range[0]) / (range[1] - range[0])) * plotH;
  for (let r = 1; r <= maxRound; r += 1) {
    svg.append(svgEl("text", { x: x(r), y: height - bottom + 16, "text-anchor": "middle", class: "tick" }, String(r)));
  }
  series.forEach((s, si) => {
    if (!s.points.length) return;
    const colour = SERIES_COLOURS[si % 4];
    svg.append(svgEl("polyline", { points: s.points.map((p) => `${x(p.round)},${y(p.value)}`).join(" "), fill: "none",
      stroke: colour, "stroke-width": 2, class: `line series-${si}` }));
    for (const p of s.points) {
      const dot = svgEl("circle", { cx: x(p.round), cy: y(p.value), r: 3.5, fill: colour, class: `dot series-${si}` });
      dot.append(svgEl("title", {}, `${s.label} · ${p.round}: ${fmt(p.value)}`));
      svg.append(dot);
    }
  });
  legend(svg, series, left, 14);
  return svg;
}

// One bar per version (oldest left): the best-worst gap; the compared versions in their series colour.
function gapBars(host, { versions, highlight, label }) {
  const height = 250, left = 44, top = 26, bottom = 40;
  const { svg, width } = chartFrame(host, height, label);
  const plotH = height - top - bottom;
  const max = Math.max(0.05, ...versions.map((v) => v.gap ?? 0)) * 1.15;
  yAxis(svg, [0, max], left, top, plotH, width);
  const slot = (width - left - 8) / Math.max(versions.length, 1), barW = Math.min(44, slot - 12);
  versions.forEach((v, i) => {
    const x = left + i * slot + (slot - barW) / 2, si = highlight.indexOf(v.version);
    svg.append(svgEl("text", { x: x + barW / 2, y: height - bottom + 16, "text-anchor": "middle", class: "category" },
      `v${v.version}`));
    if (v.gap == null) return;
    const h = Math.max(1, (v.gap / max) * plotH);
    const bar = svgEl("rect", { x, y: top + plotH - h, width: barW, height: h, rx: 2,
      fill: si >= 0 ? SERIES_COLOURS[si] : "#b0bec5", class: `gap-bar${si >= 0 ? ` series-${si}` : ""}`, "data-version": v.version });
    bar.append(svgEl("title", {}, `v${v.version}: ${fmt(v.gap)}`));
    svg.append(bar);
    svg.append(svgEl("text", { x: x + barW / 2, y: top + plotH - h - 3, "text-anchor": "middle", class: "value" }, fmt(v.gap)));
  });
  return svg;
}
