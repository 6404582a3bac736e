// Fenji governance console: a version's model card (markdown from GET .../card), rendered as DOM nodes
// and never through innerHTML: headings, paragraphs, bullet lists, pipe tables, **bold** and `code`.
// Links, images and raw HTML stay text. The cards are written in English; with the page in Chinese
// their known section headings are shown in Chinese. Uses state, el(), t() and api() from console.js.
"use strict";

const CARD_HEADINGS_ZH = {
  "Intended use": "适用范围", "Training": "训练", "Performance per site (held-out rows)": "各站点表现（留出数据）",
  "Calibration": "校准", "Tier policy (governance settings)": "分级策略（治理设置）", "Known limits": "已知局限",
  "Personalisation": "个性化",
};
const cards = {};  // task/version -> markdown (a version's card never changes)
const openCards = new Set();  // task/version of the cards left open: a re-render keeps them open

function markdownInline(text) {
  const span = el("span");
  for (const part of String(text).split(/(\*\*[^*]+\*\*|`[^`]+`)/)) {
    if (!part) continue;
    if (part.length > 4 && part.startsWith("**") && part.endsWith("**")) span.append(el("strong", { text: part.slice(2, -2) }));
    else if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) span.append(el("code", { text: part.slice(1, -1) }));
    else span.append(part);
  }
  return span;
}

function markdownTable(rows) {
  const cells = (line) => line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  const right = cells(rows[1]).map((c) => c.endsWith(":"));
  const row = (line, tag) => el("tr", {}, ...cells(line).map((c, i) => {
    const cell = el(tag, { class: right[i] ? "num" : "txt" });
    cell.append(markdownInline(c));
    return cell;
  }));
  return el("div", { class: "table-wrap" }, el("table", { class: "card-table" },
    el("thead", {}, row(rows[0], "th")), el("tbody", {}, ...rows.slice(2).map((line) => row(line, "td")))));
}

function renderMarkdown(host, markdown, lang = "en") {
  host.replaceChildren();
  const lines = String(markdown).replace(/\r\n?/g, "\n").split("\n");
  let list = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (/^\s*\|/.test(line) && i + 1 < lines.length && /^\s*\|?\s*:?-{3,}/.test(lines[i + 1])) {
      const rows = [];
      while (i < lines.length && /^\s*\|/.test(lines[i])) rows.push(lines[i++]);
      i--;
      host.append(markdownTable(rows));
      list = null;
      continue;
    }
    const item = line.match(/^\s*[-*]\s+(.*)$/);
    if (item) {
      if (!list) { list = el("ul"); host.append(list); }
      const li = el("li");
      li.append(markdownInline(item[1]));
      list.append(li);
      continue;
    }
    list = null;
    const heading = line.match(/^(#{1,4})\s+(.*)$/);
    if (heading) {
      const title = heading[2].trim();
      host.append(el(`h${Math.min(heading[1].length + 2, 5)}`, { text: (lang === "zh" && CARD_HEADINGS_ZH[title]) || title }));
    } else if (line.trim()) {
      const p = el("p");
      p.append(markdownInline(line));
      host.append(p);
    }
  }
}

// A collapsed "model card" block for a version card; the card is fetched when it is first opened.
function modelCardBlock(view) {
  const key = `${view.task}/${view.version}`;
  const body = el("div", { class: "model-card", id: `model-card-v${view.version}` });
  const block = el("details", { class: "model-card-block", "data-version": view.version, open: openCards.has(key) },
    el("summary", { text: t("model_card") }), body);
  const show = () => renderMarkdown(body, cards[key], state.lang);
  if (key in cards) show();
  block.addEventListener("toggle", async () => {
    if (block.open) openCards.add(key); else openCards.delete(key);
    if (!block.open || key in cards) return;
    body.replaceChildren(el("p", { class: "muted", text: t("loading") }));
    try {
      cards[key] = await api("GET", `/models/${encodeURIComponent(view.task)}/versions/${encodeURIComponent(view.version)}/card`);
      show();
    } catch (err) {
      body.replaceChildren(el("p", { class: "error-text", text: t("error") + (err.text || String(err)) }));
    }
  });
  return block;
}
