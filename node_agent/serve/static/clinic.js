// Fenji workstation: the clinic's loop after the visit. Decisions waiting for an outcome (record it), and
// referrals (上转) with their status, the follow-up list of patients referred back (下转) and their slips.
// Uses state, $(), el(), t(), pick(), pct(), api(), logOut() from app.js; openSlip() from slip.js.
"use strict";

const NEXT_STATUS = {  // as node_agent/serve/referrals.py allows
  referred: ["received", "referred_back", "cancelled"], received: ["referred_back", "closed"],
  referred_back: ["closed"], closed: [], cancelled: [],
};
const clinic = { pending: [], source: "server", session: [], referrals: [], error: "" };

function resetClinic() {
  Object.assign(clinic, { pending: [], source: "server", session: [], referrals: [], error: "", saved: "" });
  state.slip = null;
  $("slip-view").hidden = true;
  $("outcomes-view").hidden = true;
  $("referrals-view").hidden = true;
}

function rememberDecision(decision) {
  // Shown as pending at once; the server's list (GET /decisions/pending) is the authority when it answers.
  clinic.session = [decision, ...clinic.session.filter((d) => d.decision_id !== decision.decision_id)];
}

function showView(view) {
  state.view = view;
  $("workstation").hidden = view !== "assess";
  $("outcomes-view").hidden = view !== "outcomes";
  $("referrals-view").hidden = view !== "referrals";
  document.querySelectorAll("#views button").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
  if (view === "outcomes") loadPending();
  if (view === "referrals") loadReferrals();
}

async function guarded(work) {
  try {
    clinic.error = "";
    await work();
  } catch (err) {
    if (err.status === 401) { logOut(t("session_expired")); return; }
    clinic.error = t("error") + err.text;
  }
  renderClinic();
}

async function loadPending() {
  await guarded(async () => {
    try {
      clinic.pending = await api("GET", "/decisions/pending?limit=50");
      clinic.source = "server";
    } catch (err) {
      if (![403, 404, 405].includes(err.status)) throw err;
      // A node agent without the pending list: the decision log (site admins only), else this session's.
      try {
        clinic.pending = (await api("GET", "/decisions?limit=100")).filter((d) => !d.outcomes.length);
        clinic.source = "server";
      } catch (inner) {
        if (inner.status !== 403) throw inner;
        clinic.pending = clinic.session;
        clinic.source = "session";
      }
    }
  });
}

async function loadReferrals() {
  await guarded(async () => { clinic.referrals = await api("GET", "/referrals?limit=200"); });
}

function decisionLine(d) {
  const when = new Date(d.decided_at).toLocaleString(state.lang === "zh" ? "zh-CN" : "en-GB");
  const what = d.decision === "refer" ? t(d.referred_tier === "county" ? "refer_county" : "refer_tertiary") : t("treat_here");
  return `${d.encounter_id} · ${when} · ${what} · ${t("triage")} ${d.triage_level} · ${t("referral_risk")} ${pct(d.referral_risk)}`;
}

function outcomeForm(d) {
  const form = el("form", { class: "outcome-form", novalidate: "" });
  for (const label of state.outcomeLabels) {
    const select = el("select", { name: label.name, id: `outcome-${d.decision_id}-${label.name}` }, el("option", { value: "", text: t("outcome_unknown") }));
    for (const c of label.classes) select.append(el("option", { value: c.value, text: pick(c.display) }));
    form.append(el("label", { class: "field" }, el("span", { text: UI[state.lang][`label_${label.name}`] || label.description || label.name }), select));
  }
  const note = el("input", { type: "text", name: "note", maxlength: "2000", placeholder: t("note_placeholder") });
  const error = el("div", { class: "error-text", role: "alert" });
  form.append(note, el("button", { type: "submit", class: "primary", text: t("outcome_record") }), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { decision_id: d.decision_id };
    for (const select of form.querySelectorAll("select")) if (select.value) body[select.name] = select.value;
    if (note.value.trim()) body.note = note.value.trim();
    if (Object.keys(body).length === 1 || (Object.keys(body).length === 2 && body.note)) { error.textContent = t("outcome_none"); return; }
    try {
      await api("POST", "/outcomes", body);
      clinic.session = clinic.session.filter((x) => x.decision_id !== d.decision_id);
      clinic.pending = clinic.pending.filter((x) => x.decision_id !== d.decision_id);
      clinic.saved = `${t("outcome_saved")}: ${d.encounter_id}`;
      renderClinic();
    } catch (err) {
      if (err.status === 401) { logOut(t("session_expired")); return; }
      error.textContent = t("error") + err.text;
    }
  });
  return form;
}

function referralItem(r) {
  const item = el("li", { class: "card referral", "data-decision": r.decision_id, "data-encounter": r.encounter_id, "data-status": r.status });
  const when = new Date(r.decided_at).toLocaleDateString(state.lang === "zh" ? "zh-CN" : "en-GB");
  item.append(el("div", { class: "referral-head" },
    el("strong", { text: r.encounter_id }), el("span", { class: "muted", text: `${when} · ${t("refer_to")} ${pick(r.receiving_title)}` }),
    el("span", { class: `status status-${r.status}`, text: t(`st_${r.status}`) })));
  if (r.plan) item.append(el("div", { class: "plan" }, el("strong", { text: `${t("plan")}：` }), r.plan));
  const actions = el("div", { class: "referral-actions" });
  const slip = el("button", { type: "button", class: "slip-open", text: t("slip") });
  slip.addEventListener("click", () => openSlip(r));
  actions.append(slip);
  const next = NEXT_STATUS[r.status] || [];
  const plan = next.includes("referred_back") ? el("input", { type: "text", class: "plan-input", maxlength: "2000", placeholder: t("plan") }) : null;
  if (plan) actions.append(plan);
  const error = el("div", { class: "error-text", role: "alert" });
  for (const status of next) {
    const button = el("button", { type: "button", "data-action": status, text: t(`do_${status}`) });
    button.addEventListener("click", async () => {
      const body = { status };
      if (status === "referred_back") {
        if (!plan.value.trim()) { error.textContent = t("plan_required"); return; }
        body.plan = plan.value.trim();
      }
      await guarded(async () => {
        const changed = await api("POST", `/referrals/${encodeURIComponent(r.decision_id)}/status`, body);
        clinic.referrals = [changed, ...clinic.referrals.filter((x) => x.decision_id !== r.decision_id)];
      });
    });
    actions.append(button);
  }
  item.append(actions, error);
  return item;
}

function renderClinic() {
  if (!state.me) return;
  $("pending-note").textContent = clinic.source === "session" ? t("pending_session") : "";
  $("pending-list").replaceChildren(...clinic.pending.map((d) => el("li", { class: "card pending", "data-decision": d.decision_id, "data-encounter": d.encounter_id },
    el("div", { class: "pending-head", text: decisionLine(d) }), outcomeForm(d))));
  $("pending-empty").hidden = clinic.pending.length > 0;
  $("outcome-saved").textContent = clinic.saved || "";
  const back = clinic.referrals.filter((r) => r.status === "referred_back");
  const rest = clinic.referrals.filter((r) => r.status !== "referred_back");
  $("followup-list").replaceChildren(...(back.length ? back.map(referralItem) : [el("li", { class: "muted", text: t("none") })]));
  $("referral-list").replaceChildren(...(rest.length ? rest.map(referralItem) : [el("li", { class: "muted", text: t("none") })]));
  $("clinic-error").textContent = clinic.error;
}

function wireClinic() {
  document.querySelectorAll("#views button").forEach((b) => b.addEventListener("click", () => showView(b.dataset.view)));
  wireSlip();
}
