// Fenji workstation: the model card's markdown, rendered as DOM nodes (never innerHTML), a small safe
// subset: headings, paragraphs, bullet lists, pipe tables, **bold** and `code`. Links and raw HTML stay text.
// The cards are written in English; with the page in Chinese their known section headings are translated.
"use strict";

const CARD_HEADINGS_ZH = {
  "Intended use": "适用范围", "Training": "训练", "Performance per site (held-out rows)": "各站点表现（留出数据）",
  "Calibration": "校准", "Tier policy (governance settings)": "分级策略（治理设置）", "Known limits": "已知局限",
  "Personalisation": "个性化",
};

function markdownInline(text) {
  const span = document.createElement("span");
  for (const part of String(text).split(/(\*\*[^*]+\*\*|`[^`]+`)/)) {
    if (!part) continue;
    if (part.length > 4 && part.startsWith("**") && part.endsWith("**")) {
      const strong = document.createElement("strong");
      strong.textContent = part.slice(2, -2);
      span.append(strong);
    } else if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) {
      const code = document.createElement("code");
      code.textContent = part.slice(1, -1);
      span.append(code);
    } else span.append(part);
  }
  return span;
}

function markdownTable(rows) {
  // rows: the pipe lines of one table; the second is the alignment row (|---|---:|).
  const cells = (line) => line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  const align = cells(rows[1]).map((c) => (c.endsWith(":") ? "right" : "left"));
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  cells(rows[0]).forEach((c) => { const th = document.createElement("th"); th.append(markdownInline(c)); head.append(th); });
  const body = table.createTBody();
  for (const line of rows.slice(2)) {
    const tr = body.insertRow();
    cells(line).forEach((c, i) => { const td = tr.insertCell(); td.style.textAlign = align[i] || "left"; td.append(markdownInline(c)); });
  }
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";  // a wide table scrolls inside the card, never the page
  wrap.append(table);
  return wrap;
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
      if (!list) { list = document.createElement("ul"); host.append(list); }
      const li = document.createElement("li");
      li.append(markdownInline(item[1]));
      list.append(li);
      continue;
    }
    list = null;
    const heading = line.match(/^(#{1,4})\s+(.*)$/);
    if (heading) {
      const h = document.createElement(`h${Math.min(heading[1].length + 1, 4)}`);
      const title = heading[2].trim();
      h.textContent = (lang === "zh" && CARD_HEADINGS_ZH[title]) || title;
      host.append(h);
    } else if (line.trim()) {
      const p = document.createElement("p");
      p.append(markdownInline(line));
      host.append(p);
    }
  }
}
