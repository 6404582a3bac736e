// Fenji governance console: log in with an account token, then the views (views.js, sites.js): model
// versions side by side, approvals waiting for a second signature, the sites and their reports, the
// audit trail with its verification. A view is a nav button (data-view="x") and a <main id="x-view">.
// Speaks only to /api/v1 of the server that served it. No external resource, no innerHTML with data.
"use strict";

const API = "/api/v1";
const ALIAS = "production";

const state = {
  lang: localStorage.getItem("fenji.console.lang") === "en" ? "en" : "zh",
  token: sessionStorage.getItem("fenji.console.token") || "",
  me: null,
  view: "models",     // models | approvals | audit
  tasks: [], task: null,
  versions: [],       // GET /models/{task}/versions, newest first
  compare: [null, null],
  metric: null,
  rounds: {},         // version -> GET .../rounds
  policies: {},       // task/version -> GET .../tier-policy (null: no bundle); a version's policy never changes
  promotions: [],     // GET /promotions, newest first
  audit: null,        // {entries, verdict}
  sites: null,        // GET /sites
  message: null,      // {key, params}: the last change made from this page
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
};
const t = (key, params = {}) => (UI[state.lang][key] ?? key).replace(/\{(\w+)\}/g, (_, k) => params[k] ?? "");
const fmt = (x) => (x == null ? "—" : Number.isInteger(x) ? String(x) : x.toFixed(3));
const when = (iso) => (iso ? iso.replace("T", " ").slice(0, 16) : "");
const isCommissioner = () => state.me && state.me.role === "commissioner";

class ApiError extends Error {
  constructor(status, body) {
    super(`HTTP ${status}`);
    this.status = status;
    const detail = body && body.detail;
    this.text = Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : (detail || (typeof body === "string" ? body : this.message));
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, { detail: String(err) });
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (response.status === 401 && state.me) { logOut(t("session_expired")); }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function showError(err) {
  $("page-error").textContent = err ? t("error") + (err.text || String(err)) : "";
}

// ---- language -------------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  document.querySelectorAll("[data-i18n]").forEach((node) => { node.textContent = t(node.dataset.i18n); });
  $("lang-toggle").textContent = state.lang === "zh" ? "English" : "中文";
  if (state.me) $("who").textContent = `${state.me.name} · ${t(`role_${state.me.role}`)}`;
  renderMessage();
  if (state.me) renderView();
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
  state.me = me;
  sessionStorage.setItem("fenji.console.token", token);
  $("login").hidden = true;
  $("views").hidden = false;
  $("logout").hidden = false;
  $("view-audit").hidden = me.role === "data_scientist";  // the API refuses them the audit trail
  applyLanguage();
  await showView("models");
}

function logOut(message = "") {
  Object.assign(state, { token: "", me: null, tasks: [], task: null, versions: [], promotions: [], audit: null,
    sites: null, rounds: {}, policies: {}, message: null });
  sessionStorage.removeItem("fenji.console.token");
  for (const id of ["views", "logout", "action-result"]) $(id).hidden = true;
  document.querySelectorAll("main.view").forEach((main) => { main.hidden = true; });
  $("who").textContent = "";
  showError(null);
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token-input").value = "";
  $("token-input").focus();
}

// ---- views ------------------------------------------------------------------------------------------
async function showView(view) {
  state.view = view;
  document.querySelectorAll("#views [data-view]").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
  document.querySelectorAll("#views [data-view]").forEach((b) => { $(`${b.dataset.view}-view`).hidden = b.dataset.view !== view; });
  showError(null);
  try {
    await loadView(view);
  } catch (err) {
    showError(err);
  }
  renderView();
}

function renderView() {
  if (state.view === "models") renderModels();
  else if (state.view === "approvals") renderApprovals();
  else if (state.view === "sites") renderSites();
  else renderAudit();
  renderPendingCount();
}

function renderPendingCount() {
  const pending = state.promotions.filter((p) => p.status === "pending").length;
  $("pending-count").hidden = pending === 0;
  $("pending-count").textContent = String(pending);
}

function setMessage(key, params) {
  state.message = key ? { key, params } : null;
  renderMessage();
}

function renderMessage() {
  $("action-result").hidden = !state.message;
  $("action-result").textContent = state.message ? t(state.message.key, state.message.params) : "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("lang-toggle").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem("fenji.console.lang", state.lang);
    applyLanguage();
  });
  $("logout").addEventListener("click", () => logOut());
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (token) logIn(token);
  });
  document.querySelectorAll("#views [data-view]").forEach((b) => b.addEventListener("click", () => {
    setMessage(null);
    showView(b.dataset.view);
  }));
  bindViews();
  applyLanguage();
  if (state.token) logIn(state.token); else logOut();
});
