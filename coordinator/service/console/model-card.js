// Fenji governance console: a version's model card (markdown from GET .../card) in a collapsed block,
// fetched in the page's language (?lang=zh-CN|en) when first opened, or drawn open after the language
// was switched, and rendered by the renderer the clinic's page uses too (markdown.js, served from
// federation/static). A version registered before cards were written in Chinese has only its English
// card; the renderer then shows its known headings in Chinese. Uses state, el(), t() and api() from console.js.
"use strict";

const cards = {};  // task/version/language -> markdown (a version's card never changes)
const openCards = new Set();  // task/version of the cards left open: a re-render keeps them open

// A collapsed "model card" block for a version card, in the page's language.
function modelCardBlock(view) {
  const key = `${view.task}/${view.version}`;
  const lang = state.lang === "zh" ? "zh-CN" : "en";
  const cached = `${key}/${lang}`;
  const body = el("div", { class: "model-card", id: `model-card-v${view.version}`, lang });
  const block = el("details", { class: "model-card-block", "data-version": view.version, open: openCards.has(key) },
    el("summary", { text: t("model_card") }), body);
  const show = () => renderMarkdown(body, cards[cached], state.lang, 3);  // under the version card's h2
  let loading = false;  // a block drawn open also gets a toggle event: fetch once
  const load = async () => {
    if (loading) return;
    loading = true;
    body.replaceChildren(el("p", { class: "muted", text: t("loading") }));
    try {
      const path = `/models/${encodeURIComponent(view.task)}/versions/${encodeURIComponent(view.version)}/card`;
      cards[cached] = await api("GET", `${path}?lang=${lang}`);
      show();
    } catch (err) {
      body.replaceChildren(el("p", { class: "error-text", text: t("error") + (err.text || String(err)) }));
    }
    loading = false;
  };
  if (cached in cards) show();
  else if (block.open) load();  // left open, and the language was switched since it was fetched
  block.addEventListener("toggle", () => {
    if (block.open) openCards.add(key); else openCards.delete(key);
    if (block.open && !(cached in cards)) load();
  });
  return block;
}
