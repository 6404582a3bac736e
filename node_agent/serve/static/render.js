// Fenji workstation: the explanation chart (inline SVG), the models' versions and their cards.
// Uses $(), el(), t(), pick(), fmt(), api() and displayValue() from app.js (loaded after this file, called once it ran).
"use strict";

const STRONG_PUSH = 0.5;  // log-odds: a push this large moves a 20% risk to about 30%

function pushWords(c) {
  const strong = Math.abs(c.contribution) >= STRONG_PUSH;
  return t(c.contribution > 0 ? (strong ? "raises_strong" : "raises") : (strong ? "lowers_strong" : "lowers"));
}

function explanationLabel(c) {
  // A word of the patient's own free text is shown as that word ("“发热” raises the risk"), never as
  // the feature's hashed columns; any other feature as its name and the patient's value.
  if (c.word) return `${pick(c.title)}：${t("word_quote", { w: c.value })}`;
  const value = c.value == null ? t("not_recorded_value")
    : typeof c.value === "number" ? fmt(c.value) : displayValue(c.feature, c.value);
  return `${pick(c.title)}: ${value}`;
}

function explanationChart(items) {
  // One row per feature (or per word of a free-text complaint): its name and value, then what it does
  // to the risk in words; below, a bar around a zero line (up = right in red, down = left in green).
  // The number is only in the tooltip.
  const ns = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text != null) node.textContent = text;
    return node;
  };
  // Drawn at the container's own width, so that 13px text stays 13px.
  const width = Math.max(300, $("explanation").clientWidth || 520), row = 40, top = 2;
  const height = top * 2 + Math.max(items.length, 1) * row;
  const mid = width / 2, half = width / 2 - 6;
  const maxAbs = Math.max(0.01, ...items.map((c) => Math.abs(c.contribution)));
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": t("explanation") });
  items.forEach((c, i) => {
    const y = top + i * row;
    const w = Math.max(2, (Math.abs(c.contribution) / maxAbs) * half);
    const up = c.contribution > 0;
    const label = explanationLabel(c);
    const g = svgEl("g", { class: c.word ? "push push-word" : "push" });
    g.append(svgEl("title", {}, `${label} — ${pushWords(c)} (${up ? "+" : "−"}${Math.abs(c.contribution).toFixed(2)})`));
    g.append(svgEl("text", { x: 0, y: y + 14, class: c.word ? "label word-label" : "label" }, label));
    g.append(svgEl("text", { x: width, y: y + 14, "text-anchor": "end", class: up ? "word up" : "word down" }, pushWords(c)));
    g.append(svgEl("line", { x1: mid, x2: mid, y1: y + 19, y2: y + 35, stroke: "#9aa5b1", "stroke-width": 1 }));
    g.append(svgEl("rect", { x: up ? mid : mid - w, y: y + 21, width: w, height: 12, rx: 2,
      fill: up ? "#c62828" : "#2e7d32", class: up ? "bar-up" : "bar-down" }));
    svg.append(g);
  });
  return svg;
}

// ---- the three models: versions in the header, links to their cards ----------------------------------
const TASK_ORDER = ["triage", "referral_risk", "diagnosis"];

function readsText(task) {
  const features = state.models && state.models.features && state.models.features[task];
  const text = new Set(((state.schema && state.schema.features) || []).filter((f) => f.kind === "text").map((f) => f.name));
  return Boolean(features && features.some((name) => text.has(name)));
}

function modelLabel(task, ref) {
  const name = UI[state.lang][`task_${task}`] || task;
  return `${name} v${ref.version}` + (ref.personalised ? ` (${t("personalised")})` : "")
    + (readsText(task) ? ` (${t("reads_text")})` : "");
}

function orderedModels(models) {
  return Object.entries(models || {}).sort(([a], [b]) => (TASK_ORDER.indexOf(a) + 1 || 9) - (TASK_ORDER.indexOf(b) + 1 || 9));
}

function renderModelVersion() {
  const host = $("model-version");
  host.replaceChildren();
  if (!state.models) return;
  for (const [task, ref] of orderedModels(state.models.models)) {
    host.append(el("span", { class: "model-tag", "data-task": task, title: `${ref.name} v${ref.version}`, text: modelLabel(task, ref) }));
  }
}

function renderModelLinks(models) {
  const host = $("model-links");
  host.replaceChildren(t("model") + ":");
  for (const [task, ref] of orderedModels(models)) {
    const link = el("a", { href: "#", "data-task": task, text: modelLabel(task, ref) });
    link.title = `${ref.name} v${ref.version} — ${t("model_card")}`;
    link.addEventListener("click", (e) => { e.preventDefault(); showModelCard(task, ref); });
    host.append(link);
  }
}

// The card is fetched with the token, in the page's language, and rendered as DOM nodes (markdown.js).
async function showModelCard(task, ref) {
  $("card-title").textContent = `${modelLabel(task, ref)} — ${t("model_card")}`;
  const body = $("card-body");
  const url = new URL(ref.card_url, location.origin);
  url.searchParams.set("lang", state.lang === "zh" ? "zh-CN" : "en");
  try {
    renderMarkdown(body, await api("GET", (url.pathname + url.search).replace(API, "")), state.lang);
  } catch (err) {
    body.replaceChildren(el("p", { class: "error-text", text: t("error") + err.text }));
  }
  $("card-dialog").showModal();
}
