// Fenji workstation: one patient's first visit in, the advisor's assessment out, the doctor's decision recorded.
// Labels come from the server (GET /api/v1/schema/form and the Assessment's zh/en texts); the server
// validates every value, this page only hints. No external resource, no innerHTML with data.
"use strict";

const API = "/api/v1";

const state = {
  lang: localStorage.getItem("fenji.lang") === "en" ? "en" : "zh",
  token: sessionStorage.getItem("fenji.token") || "",
  me: null, schema: null, models: null,
  scored: null,        // {encounter_id, inputs, result} of the last assessment shown
  errors: [],          // the last 422 items for the patient form
  confirmation: null,  // the last recorded decision
  referral: null,      // the referral opened for it, if the doctor referred up
  outcomeLabels: [],   // GET /schema/outcomes: what an outcome may say
  view: "assess",      // assess | outcomes | referrals (clinic.js)
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
};
const t = (key, params = {}) => (UI[state.lang][key] || key).replace(/\{(\w+)\}/g, (_, k) => params[k] ?? "");
const pick = (text) => (text && (text[state.lang] || text.en || text.zh || Object.values(text)[0])) || "";
const pct = (p) => `${Math.round(p * 100)}%`;
const list = (items) => items.join(state.lang === "zh" ? "、" : ", ");
const UNITS_ZH = { years: "岁", "/min": "次/分" };
const unit = (u) => (state.lang === "zh" && UNITS_ZH[u]) || u;
const fmt = (x) => (Number.isInteger(x) ? String(x) : String(Math.round(x * 10) / 10));

class ApiError extends Error {
  constructor(status, body) {
    super(`HTTP ${status}`);
    this.status = status;
    this.items = Array.isArray(body && body.detail) ? body.detail : [];
  }
  get text() { return this.items.map((i) => pick(i.text) || i.msg).join("; ") || this.message; }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    const text = { zh: "无法连接到本机服务", en: "Cannot reach the node agent" };
    throw new ApiError(0, { detail: [{ msg: String(err), text }] });
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// ---- language -------------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = state.lang === "zh" ? "分级 Fenji · 首诊辅助评估" : "Fenji · first-visit decision support";
  document.querySelectorAll("[data-i18n]").forEach((node) => { node.textContent = t(node.dataset.i18n); });
  $("lang-toggle").textContent = state.lang === "zh" ? "English" : "中文";
  $("decision-note").placeholder = t("referral_note");
  if (state.me) $("who").textContent = state.me.name;
  if (state.schema) labelForm();
  renderModelVersion();
  renderFieldErrors();
  if (state.scored) renderResult(state.scored.result);
  renderStale();
  renderConfirmation();
  renderClinic();
  renderSlip();
}

// ---- log-in -----------------------------------------------------------------------------------------
async function logIn(token) {
  state.token = token;
  let me;
  try {
    me = await api("GET", "/me");
  } catch (err) {
    logOut(err.status === 401 ? t("bad_token") : t("error") + err.text);
    return;
  }
  if (me.role !== "doctor") { logOut(t("not_doctor", { role: me.role })); return; }
  try {
    [state.schema, state.models, state.outcomeLabels] = await Promise.all(
      [api("GET", "/schema/form"), api("GET", "/model"), api("GET", "/schema/outcomes")]);
  } catch (err) {
    logOut(t("error") + err.text);
    return;
  }
  state.me = me;
  sessionStorage.setItem("fenji.token", token);
  buildForm();
  $("login").hidden = true;
  $("workstation").hidden = false;
  $("logout").hidden = false;
  $("views").hidden = false;
  applyLanguage();
  showView("assess");
}

function logOut(message = "") {
  Object.assign(state, { token: "", me: null, scored: null, errors: [], confirmation: null, referral: null });
  resetClinic();
  sessionStorage.removeItem("fenji.token");
  $("workstation").hidden = true;
  $("views").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("model-version").replaceChildren();
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token-input").value = "";
  $("token-input").focus();
}

// ---- the form, built from the spec -----------------------------------------------------------------
function sectionOf(f) {
  if (f.required) return "section_required";
  return { numeric: "section_numeric", categorical: "section_categorical", boolean: "section_boolean",
    text: "section_categorical" }[f.kind];
}

function buildForm() {
  const host = $("form-fields");
  host.replaceChildren();
  for (const section of ["section_required", "section_numeric", "section_categorical", "section_boolean"]) {
    const features = state.schema.features.filter((f) => sectionOf(f) === section);
    if (!features.length) continue;
    host.append(el("div", { class: "section-title", "data-i18n": section }));
    const grid = el("div", { class: "grid" });
    for (const f of features) grid.append(buildField(f));
    host.append(grid);
  }
  newEncounter();
}

function buildField(f) {
  const id = `f-${f.name}`;
  const label = el("label", { for: id }, el("span", { class: "name" }), el("span", { class: "hint" }));
  let input;
  if (f.kind === "text") {  // free-text chief complaint: sent as typed, if a served model reads it
    input = el("input", { id, type: "text", maxlength: "500", "data-feature": f.name });
    input.addEventListener("input", () => { clearFieldError(f.name); markStale(); });
    const error = el("div", { class: "error-text", id: `error-${f.name}` });
    const hint = el("div", { class: "text-hint muted small", id: `text-hint-${f.name}`, role: "note" });
    return el("div", { class: "field field-text", id: `field-${f.name}` }, label, input, hint, error);
  } else if (f.kind === "numeric") {
    // Errors clear while typing, not on blur: a layout shift on blur would move the button under the click.
    input = el("input", { id, type: "text", inputmode: "decimal", "data-feature": f.name });
    input.addEventListener("input", () => { clearFieldError(f.name); hintRange(f, input); markStale(); });
  } else {
    input = el("select", { id, "data-feature": f.name }, el("option", { value: "" }));
    const options = f.kind === "boolean" ? [{ value: "true" }, { value: "false" }] : f.options;
    for (const o of options) input.append(el("option", { value: o.value }));
    input.addEventListener("change", () => { clearFieldError(f.name); markStale(); });
  }
  const error = el("div", { class: "error-text", id: `error-${f.name}` });
  return el("div", { class: "field", id: `field-${f.name}` }, label, input, error);
}

function labelForm() {
  for (const f of state.schema.features) {
    const field = $(`field-${f.name}`);
    const name = field.querySelector(".name");
    name.textContent = pick(f.display) + (f.unit && f.kind === "numeric" ? ` (${unit(f.unit)})` : "");
    if (f.required) name.append(el("span", { class: "req", text: "*" }));
    field.querySelector(".hint").textContent = f.min != null && f.max != null ? `${fmt(f.min)}–${fmt(f.max)}` : "";
    const input = $(`f-${f.name}`);
    if (f.kind === "text") labelTextField(f, input);
    if (f.kind === "numeric" || f.kind === "text") { input.placeholder = ""; continue; }
    const [empty, ...rest] = input.options;
    empty.textContent = f.required ? t("choose") : t("not_recorded_option");
    rest.forEach((option, i) => {
      option.textContent = f.kind === "boolean" ? t(i === 0 ? "yes" : "no") : pick(f.options[i].display);
    });
  }
}

// Which served models read a feature (GET /model's `features`; an advisor that does not say reads them all).
function readersOf(name) {
  const features = (state.models && state.models.features) || {};
  const tasks = Object.keys(features);
  return tasks.length ? tasks.filter((task) => features[task].includes(name)) : null;
}

function labelTextField(f, input) {
  // The free text goes to the server only when a model in use reads it; the hint says which do.
  const readers = readersOf(f.name);
  const all = readers === null || readers.length === Object.keys(state.models.features).length;
  const hint = $(`text-hint-${f.name}`);
  hint.textContent = readers !== null && !readers.length ? t("text_ignored")
    : all ? "" : t("text_read_by", { tasks: list(readers.map((task) => t(`task_${task}`))) });
  hint.hidden = hint.textContent === "";
  input.disabled = readers !== null && !readers.length;
  $(`field-${f.name}`).classList.toggle("ignored", input.disabled);
}

function hintRange(f, input) {
  const field = $(`field-${f.name}`);
  const x = Number(input.value.trim());
  const outside = input.value.trim() !== "" && Number.isFinite(x)
    && ((f.min != null && x < f.min) || (f.max != null && x > f.max));
  field.classList.toggle("warn", outside);
  if (!state.errors.some((e) => e.field === f.name)) {
    $(`error-${f.name}`).textContent = outside ? t("out_of_range", { min: fmt(f.min), max: fmt(f.max) }) : "";
  }
}

function readForm() {
  // Empty = not recorded: left out of the request, never filled in. Anything typed goes to the server
  // as typed (a number if it reads as one), so the server, not this page, decides what is valid.
  const inputs = {};
  for (const f of state.schema.features) {
    const raw = $(`f-${f.name}`).value.trim();
    if (raw === "") continue;
    if (f.kind === "text" && readersOf(f.name) !== null && !readersOf(f.name).length) continue;  // no model reads it
    if (f.kind === "numeric") inputs[f.name] = /^-?\d+(\.\d+)?$/.test(raw) ? Number(raw) : raw;
    else if (f.kind === "boolean") inputs[f.name] = raw === "true";
    else inputs[f.name] = raw;
  }
  return inputs;
}

function newEncounter() {
  const d = new Date();
  const two = (n) => String(n).padStart(2, "0");
  const date = `${d.getFullYear()}${two(d.getMonth() + 1)}${two(d.getDate())}`;
  $("encounter-id").value = `MZ${date}-${two(d.getHours())}${two(d.getMinutes())}${two(d.getSeconds())}`;
}

function markStale() {
  // The answer shown no longer matches the form: no decision may be recorded against it until re-assessed.
  if (!state.scored || state.scored.stale) return;
  state.scored.stale = true;
  renderStale();
}

function renderStale() {
  const stale = Boolean(state.scored && state.scored.stale);
  $("result").classList.toggle("stale", stale);
  $("stale-note").hidden = !stale;
  $("stale-note").textContent = t("stale");
  $("record-button").disabled = stale || Boolean(state.confirmation);
}

// ---- validation messages from the server -------------------------------------------------------------
function clearFieldError(name) {
  state.errors = state.errors.filter((e) => e.field !== name);
  renderFieldErrors();
}

function renderFieldErrors() {
  if (!state.schema) return;
  const known = new Set(state.schema.features.map((f) => f.name));
  for (const f of state.schema.features) {
    const mine = state.errors.filter((e) => e.field === f.name);
    $(`field-${f.name}`).classList.toggle("invalid", mine.length > 0);
    if (mine.length) $(`error-${f.name}`).textContent = mine.map((e) => pick(e.text) || e.msg).join("; ");
    else if (!$(`field-${f.name}`).classList.contains("warn")) $(`error-${f.name}`).textContent = "";
  }
  const other = state.errors.filter((e) => !known.has(e.field));
  $("form-error").textContent = state.errors.length
    ? [t("fix_fields"), ...other.map((e) => (e.field ? `${e.field}: ` : "") + (pick(e.text) || e.msg))].join(" · ")
    : "";
}

// ---- scoring -----------------------------------------------------------------------------------------
async function score(event) {
  event.preventDefault();
  const inputs = readForm();
  const button = $("score-button");
  button.disabled = true;
  button.textContent = t("scoring");
  state.errors = [];
  try {
    const result = await api("POST", "/score", inputs);
    state.scored = { encounter_id: $("encounter-id").value.trim(), inputs, result };
    state.confirmation = null;
    state.referral = null;
    document.querySelectorAll("input[name=decision]").forEach((r) => { r.checked = false; });
    $("decision-note").value = "";
    $("decision-error").textContent = "";
    renderResult(result);
    renderStale();
    fetchAlerts(state.scored);
    if (window.matchMedia("(max-width: 820px)").matches) $("result-panel").scrollIntoView();  // a phone: the form is above
  } catch (err) {
    if (err.status === 401) { logOut(t("session_expired")); return; }
    const text = err.text || String(err);
    state.errors = err.status === 422 ? err.items
      : [{ field: null, msg: text, text: { zh: UI.zh.error + text, en: UI.en.error + text } }];
  } finally {
    button.disabled = false;
    button.textContent = t("score");
    renderFieldErrors();
    renderConfirmation();
  }
}

function renderResult(r) {
  $("result-empty").hidden = true;
  $("result").hidden = false;
  const level = r.triage.level;
  const badge = $("triage-badge");
  badge.className = `badge level-${level}`;
  badge.textContent = pick(r.triage.title);
  $("triage-probs").textContent = t("triage_probs") + Object.entries(r.triage.probabilities)
    .map(([k, v]) => `${k}:\u00a0${pct(v)}`).join(" · ");
  const p = r.referral_risk.probability;
  $("risk-value").textContent = pct(p);
  const bar = $("risk-bar");
  bar.className = `bar-fill level-${p >= 0.6 ? 1 : p >= 0.25 ? 2 : 4}`;
  bar.style.width = pct(p);
  $("tier-title").textContent = pick(r.tier.title);
  $("tier-reason").textContent = pick(r.tier.reason);
  const names = Object.fromEntries(state.schema.features.map((f) => [f.name, pick(f.display)]));
  $("not-recorded").textContent = r.not_recorded.length ? t("not_recorded") + list(r.not_recorded.map((n) => names[n] || n)) : "";
  $("diagnoses").replaceChildren(...r.diagnoses.slice(0, 3).map((d) => {
    const fill = el("div", { class: "bar-fill" });
    fill.style.width = pct(d.probability);
    const line = el("div", { class: "dx-line" }, el("span", { text: pick(d.title) }), el("strong", { text: pct(d.probability) }));
    return el("li", {}, line, el("div", { class: "bar" }, fill));
  }));
  $("explanation").replaceChildren(explanationChart(r.explanation));
  $("disclaimer").textContent = pick(r.disclaimer);
  renderModelLinks(r.models);
  renderAlerts();
}

function displayValue(feature, value) {
  const f = state.schema.features.find((x) => x.name === feature);
  if (f && f.kind === "boolean") return t(value === true || value === "True" || value === "true" ? "yes" : "no");
  const option = f && f.options && f.options.find((o) => o.value === String(value));
  return option ? pick(option.display) : String(value);
}

// ---- wiring ---------------------------------------------------------------------------------------------
function clearForm() {
  $("patient-form").reset();
  document.querySelectorAll(".field.warn").forEach((f) => f.classList.remove("warn"));
  Object.assign(state, { errors: [], scored: null, confirmation: null, referral: null });
  newEncounter();
  renderFieldErrors();
  renderStale();
  $("result").hidden = true;
  $("result-empty").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("lang-toggle").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem("fenji.lang", state.lang);
    applyLanguage();
  });
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); logIn($("token-input").value.trim()); });
  $("logout").addEventListener("click", () => logOut());
  $("patient-form").addEventListener("submit", score);
  $("clear-button").addEventListener("click", clearForm);
  $("decision-form").addEventListener("submit", recordDecision);
  $("card-close").addEventListener("click", () => $("card-dialog").close());
  wireClinic();
  applyLanguage();
  if (state.token) logIn(state.token); else logOut();
});
