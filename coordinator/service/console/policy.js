// Fenji governance console: each compared version's tier policy (the thresholds that turn the triage
// level and the referral risk into a recommended tier), where it differs from production, and the
// commissioners' edit form. An edit registers a new version; it reaches the clinics after two approvals.
// Uses state, $(), el(), t(), api(), setMessage(), showError() from console.js and production(),
// loadTask(), renderView() from views.js.
"use strict";

// [path in TierPolicy, kind, label key]; critical_risk is shown as in force (the tertiary risk when unset).
const POLICY_FIELDS = [
  ["tertiary.triage_at_most", "level", "pf_tertiary_triage"], ["tertiary.risk_at_least", "risk", "pf_tertiary_risk"],
  ["county.triage_at_most", "level", "pf_county_triage"], ["county.risk_at_least", "risk", "pf_county_risk"],
  ["critical_risk", "risk", "pf_critical"],
];
const policyKey = (v) => `${state.task}/${v}`;
const thresholdOf = (policy, path) => (path === "critical_risk" ? policy.critical_risk ?? policy.tertiary.risk_at_least
  : path.split(".").reduce((o, k) => o[k], policy));
const pct = (x) => `${Number((100 * x).toFixed(2))}%`;
const shown = (kind, x) => (kind === "risk" ? pct(x) : t("level_at_most", { x }));

async function loadPolicies() {
  const wanted = [...new Set([...state.compare, production()])].filter((v) => v && !(policyKey(v) in state.policies));
  const task = encodeURIComponent(state.task);
  const found = await Promise.all(wanted.map((v) => api("GET", `/models/${task}/versions/${v}/tier-policy`)
    .catch((err) => { if (err.status === 404) return null; throw err; })));  // 404: a version without a bundle
  wanted.forEach((v, i) => { state.policies[policyKey(v)] = found[i]; });
}

function policyChanges(before, after) {
  return POLICY_FIELDS.filter(([path]) => thresholdOf(before, path) !== thresholdOf(after, path));
}

function policyBlock(view) {
  const v = view.version, found = state.policies[policyKey(v)];
  const box = el("section", { class: "policy", id: `policy-v${v}` }, el("h3", { text: t("policy_title") }));
  if (view.derived_from) box.append(el("p", { class: "derived small", text: t("derived", { v: view.derived_from }) }));
  if (!found) { box.append(el("p", { class: "muted small", text: t("policy_none") })); return box; }
  const prodV = production();
  const prod = prodV && prodV !== v ? state.policies[policyKey(prodV)] : null;
  const changed = new Set(prod ? policyChanges(prod.policy, found.policy).map(([path]) => path) : []);
  box.append(el("table", { class: "policy-table" },
    el("thead", {}, el("tr", {}, el("th", { text: "" }), el("th", { text: t("version", { v }) }),
      prod ? el("th", { text: t("policy_production", { v: prodV }) }) : null)),
    el("tbody", {}, ...POLICY_FIELDS.map(([path, kind, label]) => el("tr", { "data-field": path, class: changed.has(path) ? "changed" : null },
      el("th", { text: t(label) }), el("td", { text: shown(kind, thresholdOf(found.policy, path)) }),
      prod ? el("td", { class: "prod-value", text: shown(kind, thresholdOf(prod.policy, path)) }) : null)))));
  if (prod) {
    box.append(el("p", { class: `policy-diff small ${changed.size ? "differs" : ""}`,
      text: changed.size ? t("policy_diff", { n: changed.size, v: prodV }) : t("policy_same", { v: prodV }) }));
  }
  if (!found.applies_at_clinics) box.append(el("p", { class: "muted small", text: t("policy_unused") }));
  else if (isCommissioner()) box.append(policyForm(v, found.policy));
  return box;
}

function policyForm(v, policy) {
  const inputs = POLICY_FIELDS.map(([path, kind, label]) => {
    const value = thresholdOf(policy, path);
    const input = el("input", { type: "number", "data-field": path, required: true, min: kind === "risk" ? 0.1 : 0,
      max: kind === "risk" ? 100 : 5, step: kind === "risk" ? 0.1 : 1,
      value: kind === "risk" ? String(Number((100 * value).toFixed(2))) : String(value) });
    return el("label", { class: "policy-field" }, el("span", { text: t(label) }), input,
      el("span", { class: "muted small", text: kind === "risk" ? "%" : t("level_unit") }));
  });
  const reason = el("textarea", { id: `policy-reason-v${v}`, rows: 2, maxlength: 2000, placeholder: t("reason_placeholder"),
    "aria-label": t("reason") });
  const submit = el("button", { id: `policy-submit-v${v}`, class: "primary", type: "submit", text: t("policy_submit") });
  const form = el("form", { id: `policy-form-v${v}`, class: "policy-form" }, ...inputs,
    el("p", { class: "muted small", text: t("policy_edit_hint") }), reason, el("div", { class: "buttons" }, submit));
  form.addEventListener("submit", (event) => { event.preventDefault(); editPolicy(v, policy, form, reason.value); });
  return el("details", { class: "policy-edit", id: `policy-edit-v${v}` }, el("summary", { text: t("policy_edit") }), form);
}

async function editPolicy(base, old, form, reasonText) {
  const reason = reasonText.trim();
  setMessage(null);
  if (reason.length < 3) { showError({ text: t("need_reason") }); return; }
  showError(null);
  const read = (path) => Number(form.querySelector(`[data-field="${path}"]`).value);
  const risk = (path) => Number((read(path) / 100).toFixed(4));
  const policy = {
    name: old.name,
    tertiary: { triage_at_most: read("tertiary.triage_at_most"), risk_at_least: risk("tertiary.risk_at_least") },
    county: { triage_at_most: read("county.triage_at_most"), risk_at_least: risk("county.risk_at_least") },
    critical_risk: risk("critical_risk"),
  };
  let done;
  try {
    done = await api("POST", `/models/${encodeURIComponent(state.task)}/versions/${base}/tier-policy`, { policy, reason });
  } catch (err) {
    showError(err);
    return;  // the form keeps what was typed
  }
  const created = done.version.version;
  try {
    await Promise.all([loadTask(state.task, false), loadPromotions()]);
    state.compare = [production() || base, created];  // the new version beside what serves now
    await Promise.all([loadRounds(), loadPolicies()]);
  } catch (err) {
    showError(err);
  }
  setMessage("policy_registered", { v: created, base });
  renderView();
}

function describePolicyEdit(d) {
  if (!d.previous_policy || !d.policy) return [];
  const changes = policyChanges(d.previous_policy, d.policy).map(([path, kind, label]) =>
    `${t(`short_${label}`)} ${shown(kind, thresholdOf(d.previous_policy, path))} → ${shown(kind, thresholdOf(d.policy, path))}`);
  return [t("d_base", { v: d.base_version }), t("d_policy", { changes: changes.join(state.lang === "zh" ? "，" : ", ") })];
}
