// Fenji's model-card renderer, one file for both pages: the clinic's workstation serves it at
// /static/markdown.js and the health commission's console at /console/markdown.js (federation/pages.py).
// A card's markdown is rendered as DOM nodes, never through innerHTML, in a small safe subset: headings,
// paragraphs, bullet lists, pipe tables, **bold** and `code`; links, images and raw HTML stay text.
// The cards are written in English; with the page in Chinese their known section headings are shown in
// Chinese. Each page's CSS styles the result (a table's cells are "num", right-aligned, or "txt").
"use strict";

const CARD_HEADINGS_ZH = {
  "Intended use": "适用范围", "Training": "训练", "Performance per site (held-out rows)": "各站点表现（留出数据）",
  "Calibration": "校准", "Tier policy (governance settings)": "分级策略（治理设置）", "Known limits": "已知局限",
  "Personalisation": "个性化",
};

function markdownElement(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function markdownInline(text) {
  const span = markdownElement("span");
  for (const part of String(text).split(/(\*\*[^*]+\*\*|`[^`]+`)/)) {
    if (!part) continue;
    if (part.length > 4 && part.startsWith("**") && part.endsWith("**")) span.append(markdownElement("strong", part.slice(2, -2)));
    else if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) span.append(markdownElement("code", part.slice(1, -1)));
    else span.append(part);
  }
  return span;
}

function markdownTable(rows) {
  // rows: the pipe lines of one table; the second is the alignment row (|---|---:|).
  const cells = (line) => line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  const right = cells(rows[1]).map((c) => c.endsWith(":"));
  const row = (line, tag) => {
    const tr = markdownElement("tr");
    cells(line).forEach((c, i) => {
      const cell = markdownElement(tag);
      cell.className = right[i] ? "num" : "txt";
      cell.append(markdownInline(c));
      tr.append(cell);
    });
    return tr;
  };
  const table = markdownElement("table");
  table.className = "card-table";
  const head = markdownElement("thead");
  head.append(row(rows[0], "th"));
  const body = markdownElement("tbody");
  body.append(...rows.slice(2).map((line) => row(line, "td")));
  table.append(head, body);
  const wrap = markdownElement("div");
  wrap.className = "table-wrap";  // a wide table scrolls inside the card, never the page
  wrap.append(table);
  return wrap;
}

// top: the heading level of the card's "#" headings on this page (its "##" one level below, and so on,
// down to top + 2 at most), so that the card's headings sit under the page's own.
function renderMarkdown(host, markdown, lang = "en", top = 2) {
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
      if (!list) { list = markdownElement("ul"); host.append(list); }
      const li = markdownElement("li");
      li.append(markdownInline(item[1]));
      list.append(li);
      continue;
    }
    list = null;
    const heading = line.match(/^(#{1,4})\s+(.*)$/);
    if (heading) {
      const title = heading[2].trim();
      host.append(markdownElement(`h${Math.min(top - 1 + heading[1].length, top + 2)}`,
        (lang === "zh" && CARD_HEADINGS_ZH[title]) || title));
    } else if (line.trim()) {
      const p = markdownElement("p");
      p.append(markdownInline(line));
      host.append(p);
    }
  }
}
