// Fenji workstation: the explanation chart (inline SVG) and the model card (markdown as text nodes).
// Uses $(), el(), t(), pick(), fmt() and displayValue() from app.js (loaded after this file, called once it ran).
"use strict";

function explanationChart(items) {
  // Horizontal bars around a zero line: a push up on the risk goes right in red, down goes left in green.
  const ns = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text != null) node.textContent = text;
    return node;
  };
  // Drawn at the container's own width, so that 13px text stays 13px.
  const width = Math.max(360, $("explanation").clientWidth || 520), labelW = Math.min(220, width * 0.4);
  const row = 28, top = 4;
  const height = top * 2 + Math.max(items.length, 1) * row;
  const mid = labelW + (width - labelW) / 2, half = (width - labelW) / 2 - 40;
  const maxAbs = Math.max(0.01, ...items.map((c) => Math.abs(c.contribution)));
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": t("explanation") });
  svg.append(svgEl("line", { x1: mid, x2: mid, y1: 2, y2: height - 2, stroke: "#9aa5b1", "stroke-width": 1 }));
  items.forEach((c, i) => {
    const y = top + i * row;
    const w = Math.max(2, (Math.abs(c.contribution) / maxAbs) * half);
    const up = c.contribution > 0;
    const value = c.value == null ? "—" : typeof c.value === "number" ? fmt(c.value) : displayValue(c.feature, c.value);
    svg.append(svgEl("text", { x: 0, y: y + 18, class: "label" }, `${pick(c.title)}: ${value}`));
    svg.append(svgEl("rect", { x: up ? mid : mid - w, y: y + 6, width: w, height: row - 12, rx: 2,
      fill: up ? "#c62828" : "#2e7d32", class: up ? "bar-up" : "bar-down" }));
    svg.append(svgEl("text", { x: up ? mid + w + 4 : mid - w - 4, y: y + 18, class: "value",
      "text-anchor": up ? "start" : "end" }, (up ? "+" : "−") + Math.abs(c.contribution).toFixed(2)));
  });
  return svg;
}

function renderMarkdown(host, markdown) {
  host.replaceChildren();
  let list = null;
  const inline = (text) => {
    const span = el("span");
    text.split(/(\*\*[^*]+\*\*)/).forEach((part) => {
      span.append(part.startsWith("**") && part.endsWith("**") ? el("strong", { text: part.slice(2, -2) }) : part);
    });
    return span;
  };
  for (const line of String(markdown).split("\n")) {
    const heading = line.match(/^(#{1,3})\s+(.*)$/);
    const item = line.match(/^\s*[-*]\s+(.*)$/);
    if (item) { if (!list) { list = el("ul"); host.append(list); } list.append(el("li", {}, inline(item[1]))); continue; }
    list = null;
    if (heading) host.append(el(`h${heading[1].length}`, { text: heading[2] }));
    else if (line.trim()) host.append(el("p", {}, inline(line)));
  }
}
