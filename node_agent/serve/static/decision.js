// Fenji workstation: alerts on the answer shown, and the doctor's decision (with its referral, if up).
// Uses state, $(), el(), t(), pick(), api() and logOut() from app.js; openSlip() from slip.js.
"use strict";

// ---- alerts: critical (triage 1-2, risk above the policy's critical line) and infectious risk ----------
async function fetchAlerts(scored) {
  // The rules live on the server (node_agent/serve/syndromes.py), one table for the page and surveillance.
  const { inputs, result } = scored;
  try {
    scored.alerts = await api("POST", "/alerts", {
      inputs, triage_level: result.triage.level, referral_risk: result.referral_risk.probability });
  } catch (err) {
    if (err.status === 401) { logOut(t("session_expired")); return; }
    scored.alerts = [];
    scored.alertError = err.text;
  }
  if (state.scored === scored) renderAlerts();
}

function alertBox(a) {
  const version = a.table_version ? el("span", { class: "alert-source", text: t("alerts_table", { v: a.table_version }) }) : null;
  return el("div", { class: `alert alert-${a.kind}`, "data-code": a.code, role: "alert" },
    el("strong", { class: "alert-title", text: pick(a.title) }), el("span", { class: "alert-reason", text: pick(a.reason) }), version);
}

function renderAlerts() {
  const host = $("alerts");
  const scored = state.scored;
  const alerts = (scored && scored.alerts) || [];
  host.replaceChildren(...alerts.map(alertBox));
  if (scored && scored.alertError) host.append(el("div", { class: "error-text", text: t("error") + scored.alertError }));
  host.hidden = host.childElementCount === 0;
}

// ---- the doctor's decision ------------------------------------------------------------------------------
async function recordDecision(event) {
  event.preventDefault();
  const chosen = document.querySelector("input[name=decision]:checked");
  $("decision-error").textContent = "";
  if (!chosen) { $("decision-error").textContent = t("choose_decision"); return; }
  const { encounter_id, inputs, result } = state.scored;
  const refer = chosen.value !== "treat_here";
  const note = $("decision-note").value.trim() || null;
  const body = {
    encounter_id: $("encounter-id").value.trim() || encounter_id,
    inputs,
    assessment: {
      models: Object.fromEntries(Object.entries(result.models).map(([k, m]) => [k, { name: m.name, version: m.version }])),
      referral_risk: result.referral_risk.probability, tier: result.tier.tier, triage_level: result.triage.level,
    },
    decision: refer ? "refer" : "treat_here",
    referred_tier: refer ? chosen.value : null,
    note,
  };
  $("record-button").disabled = true;
  try {
    const decision = await api("POST", "/decisions", body);
    state.confirmation = decision;
    rememberDecision(decision);  // clinic.js: the pending list, even before the server's list says so
    if (refer) {
      // What the slip prints besides the decision itself: the reason, top diagnoses and the tier's reason as shown.
      state.referral = await api("POST", "/referrals", {
        decision_id: decision.decision_id, reason: note, tier_reason: result.tier.reason,
        diagnoses: result.diagnoses.slice(0, 3).map((d) => ({ code: d.code, probability: d.probability })) });
    }
    renderConfirmation();
  } catch (err) {
    if (err.status === 401) { logOut(t("session_expired")); return; }
    $("record-button").disabled = Boolean(state.confirmation);
    renderConfirmation();
    const items = err.items.length ? err.items : [{ msg: err.text }];
    $("decision-error").textContent = items.map((i) => (i.field ? `${i.field}: ` : "") + (pick(i.text) || i.msg)).join(" · ");
  }
}

function renderConfirmation() {
  const box = $("decision-confirmation");
  const c = state.confirmation;
  box.hidden = !c;
  if (!c) return;
  const time = new Date(c.decided_at).toLocaleTimeString(state.lang === "zh" ? "zh-CN" : "en-GB");
  box.replaceChildren("✓ " + t("recorded", { id: c.decision_id.slice(0, 8), time }));
  if (state.referral) {
    const button = el("button", { id: "slip-button", type: "button", class: "primary", text: t("print_slip") });
    button.addEventListener("click", () => openSlip(state.referral));
    box.append(" ", button);
  }
}
