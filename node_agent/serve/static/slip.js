// Fenji workstation: the referral slip (转诊单), rendered from the stored referral and printed (A5 or A4,
// in the page's language). It goes with the patient: nothing is sent anywhere.
// Uses state, $(), el(), t(), pick(), pct(), fmt(), unit(), displayValue() from app.js; alertBox() from decision.js.
"use strict";

function slipValue(f, value) {
  if (value == null) return t("not_recorded_value");
  if (f.kind === "numeric") return fmt(Number(value)) + (f.unit ? ` ${unit(f.unit)}` : "");
  return f.kind === "text" ? String(value) : displayValue(f.name, value);
}

function slipRow(label, ...value) {
  const sep = state.lang === "zh" ? "：" : ": ";
  return el("div", { class: "slip-row" }, el("span", { class: "slip-label", text: label + sep }), el("span", { class: "slip-value" }, ...value));
}

function renderSlip() {
  const r = state.slip;
  const host = $("slip");
  if (!r || !state.schema) { host.replaceChildren(); return; }
  host.lang = state.lang === "zh" ? "zh-CN" : "en";
  $("slip-lang").textContent = $("lang-toggle").textContent;
  const locale = state.lang === "zh" ? "zh-CN" : "en-GB";
  const decided = new Date(r.decided_at);
  const doctor = r.referred_by.replace(/\s*\([^)]*\)$/, "");  // the token id stays in the log, not on paper
  const first = el("div", { class: "slip-grid" }, ...state.schema.features.map((f) => slipRow(pick(f.display), slipValue(f, r.inputs[f.name]))));
  const dx = el("ol", { class: "slip-dx" }, ...r.diagnoses.map((d) => el("li", { text: `${pick(d.title)} ${pct(d.probability)}` })));
  const models = Object.entries(r.models).map(([task, m]) => `${UI[state.lang][`task_${task}`] || task} ${m.name} v${m.version}`).join(" · ");
  host.replaceChildren(
    el("header", { class: "slip-header" }, el("h1", { text: t("slip_title") }),
      el("div", { class: "slip-meta" }, el("span", { text: `${t("encounter_id")}：${r.encounter_id}` }),
        el("span", { text: `${t("slip_date")}：${decided.toLocaleDateString(locale)} ${decided.toLocaleTimeString(locale)}` }),
        el("span", { "data-status": r.status, text: `${t("status")}：${t(`st_${r.status}`)}` }))),
    el("section", {}, slipRow(t("slip_from"), el("span", { class: "blank" })),
      slipRow(t("slip_to"), el("strong", { id: "slip-receiving", text: pick(r.receiving_title) })),
      slipRow(t("slip_doctor"), doctor)),
    el("section", {}, el("h2", { text: t("slip_patient") }), first),
    el("section", {}, el("h2", { text: t("slip_assessment") }),
      slipRow(t("triage"), el("strong", { text: pick(r.triage_title) })),
      slipRow(t("referral_risk"), el("strong", { text: pct(r.referral_risk) })),
      slipRow(t("recommended_tier"), el("strong", { text: pick(r.recommended_title) }), el("div", { class: "small", text: pick(r.tier_reason) })),
      slipRow(t("diagnoses"), dx),
      ...r.alerts.map(alertBox)),
    el("section", {}, el("h2", { text: t("slip_reason") }), el("p", { id: "slip-reason", text: r.reason || t("reason_missing") }),
      ...(r.plan ? [el("h2", { text: t("plan") }), el("p", { text: r.plan })] : [])),
    el("section", { class: "slip-signatures" }, slipRow(t("slip_signature"), el("span", { class: "blank" })),
      slipRow(t("slip_receipt"), el("span", { class: "blank" }))),
    el("footer", { class: "slip-footer small" }, el("div", { text: `${t("slip_models")}：${models}` }),
      el("div", { text: state.schema.disclaimer ? pick(state.schema.disclaimer) : "" }), el("div", { text: t("slip_footer") })));
}

function openSlip(referral) {
  state.slip = referral;
  renderSlip();
  $("slip-view").hidden = false;
  $("slip-print").focus();
}

function wireSlip() {
  $("slip-close").addEventListener("click", () => { $("slip-view").hidden = true; state.slip = null; });
  $("slip-print").addEventListener("click", () => window.print());
  $("slip-lang").addEventListener("click", () => $("lang-toggle").click());  // the page's switch: one language state
  $("slip-paper").addEventListener("change", (e) => { $("page-a4").disabled = e.target.value !== "A4"; });
}
