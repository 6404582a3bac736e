// Fenji governance console: the three views. Uses state, $(), el(), t(), fmt(), when(), api() and
// setMessage() from console.js, and the plots from charts.js.
"use strict";

const NOT_QUALITY = new Set(["n", "n-eval", "rows"]);  // counts: shown in the table, not plotted
const LOWER_IS_BETTER = new Set(["log-loss", "ece", "brier", "mae"]);
const taskName = (task) => UI[state.lang][`task_${task}`] || task;
const production = () => (state.versions.find((v) => v.aliases.includes(ALIAS)) || {}).version || null;
const versionOf = (v) => state.versions.find((x) => x.version === v);
const applied = (version) => state.promotions.some((p) => p.task === state.task && p.version === version && p.status === "applied");

// ---- loading ----------------------------------------------------------------------------------------
async function loadView(view) {
  if (view === "models") {
    if (!state.tasks.length) {
      state.tasks = (await api("GET", "/models")).tasks;
      state.task = state.tasks.includes("triage") ? "triage" : state.tasks[0] || null;
    }
    await Promise.all([loadTask(state.task, false), loadPromotions()]);
  } else if (view === "approvals") {
    await loadPromotions();
  } else if (view === "sites") {
    await Promise.all([loadSites(), loadPromotions()]);  // loadSites: sites.js
  } else {
    await Promise.all([loadAudit(), loadPromotions()]);
  }
}

async function loadPromotions() {
  state.promotions = await api("GET", "/promotions");
}

async function loadTask(task, resetChoice = true) {
  if (!task) { state.versions = []; return; }
  const changed = task !== state.task || resetChoice;
  state.task = task;
  state.versions = await api("GET", `/models/${encodeURIComponent(task)}/versions`);
  const known = new Set(state.versions.map((v) => v.version));
  if (changed || !state.compare.every((v) => known.has(v))) {
    // Default: what serves now against the newest version (or the two newest).
    const newest = state.versions[0] && state.versions[0].version;
    const other = production() && production() !== newest ? production()
      : (state.versions[1] || state.versions[0] || {}).version;
    state.compare = [other || null, newest || null];
  }
  const metrics = metricsOf(state.compare);
  if (!metrics.includes(state.metric)) state.metric = metrics.includes("auroc") ? "auroc" : metrics[0] || null;
  await Promise.all([loadRounds(), loadPolicies(), loadCurves()]);  // loadPolicies: policy.js; loadCurves: curves.js
}

async function loadRounds() {
  const key = (v) => `${state.task}/${v}`;
  const wanted = state.compare.filter((v) => v && !(key(v) in state.rounds));
  const found = await Promise.all(wanted.map((v) => api("GET", `/models/${encodeURIComponent(state.task)}/versions/${v}/rounds`)));
  wanted.forEach((v, i) => { state.rounds[key(v)] = found[i].rounds; });
}

async function loadAudit() {
  const entries = [];
  for (let after = 0; ; after += 1000) {  // the API pages at 1000 entries
    const page = await api("GET", `/audit?after=${after}&limit=1000`);
    entries.push(...page.entries);
    if (entries.length >= page.total || !page.entries.length) break;
  }
  state.audit = { entries, verdict: await api("GET", "/audit/verify") };
}

function metricsOf(versions) {
  const names = new Set();
  for (const v of versions) {
    const view = versionOf(v);
    if (view) for (const site of Object.values(view.sites)) Object.keys(site).forEach((m) => names.add(m));
  }
  return [...names].filter((m) => !NOT_QUALITY.has(m)).sort();
}

// ---- model versions ---------------------------------------------------------------------------------
function options(select, values, chosen, label = (v) => v) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, selected: v === chosen }, label(v))));
  select.value = chosen ?? "";
}

function renderModels() {
  options($("task-select"), state.tasks, state.task, taskName);
  const versionLabel = (v) => t("version", { v }) + (v === production() ? ` · ${t("production")}` : "");
  const all = state.versions.map((v) => v.version);
  options($("version-a"), all, state.compare[0], versionLabel);
  options($("version-b"), all, state.compare[1], versionLabel);
  const metrics = metricsOf(state.compare);
  options($("metric-select"), metrics, state.metric);
  $("production-now").textContent = production() ? t("production_now", { v: production() }) : t("production_none");
  const shown = [...new Set(state.compare.filter(Boolean))];
  $("compare").replaceChildren(...shown.map((v, i) => versionCard(versionOf(v), i)));
  renderCharts(shown);
  renderCurves(shown);  // curves.js
}

function versionCard(view, index) {
  const v = view.version, serving = view.aliases.includes(ALIAS);
  const sites = Object.keys(view.sites).sort();
  const metrics = [...new Set(sites.flatMap((s) => Object.keys(view.sites[s])))].sort(
    (a, b) => NOT_QUALITY.has(a) - NOT_QUALITY.has(b) || a.localeCompare(b));
  const table = el("table", { class: "sites" },
    el("thead", {}, el("tr", {}, el("th", { text: t("site") }), ...metrics.map((m) => el("th", { text: m })))),
    el("tbody", {}, ...sites.map((s) => el("tr", { "data-site": s }, el("th", { text: s }),
      ...metrics.map((m) => el("td", { text: fmt(view.sites[s][m]) })))))
  );
  table.append(el("tfoot", {}, el("tr", { class: "gap-row" }, el("th", { text: t("gap") }),
    ...metrics.map((m) => el("td", { class: m === state.metric ? "chosen" : null,
      text: view.gaps[m] ? fmt(view.gaps[m].gap) : "" })))));
  const gap = view.gaps[state.metric];
  const card = el("article", { class: `card version-card series-${index}`, id: `card-v${v}`, "data-version": v },
    el("header", {}, el("h2", { text: t("version", { v }) }), serving ? el("span", { class: "badge prod", text: t("production") }) : null),
    el("div", { class: "muted small" }, `${t("created")} ${new Date(view.created_at).toISOString().slice(0, 10)} · `
      + `${view.encrypted ? t("encrypted") : t("plain")} · ${t("digest")} ${view.bundle_sha256.slice(0, 12)}…`),
    sites.length ? table : el("p", { class: "muted", text: t("no_sites") }),
    el("p", { class: "gap-line small" }, gap ? t("gap_line", { metric: state.metric, best_site: gap.best_site,
      best: fmt(gap.best), worst_site: gap.worst_site, worst: fmt(gap.worst), gap: fmt(gap.gap) }) : t("no_gap")),
    policyBlock(view), modelCardBlock(view));  // modelCardBlock: model-card.js
  if (isCommissioner()) card.append(actions(v, serving));
  return card;
}

function actions(v, serving) {
  const reason = el("textarea", { id: `reason-v${v}`, rows: 2, maxlength: 2000, placeholder: t("reason_placeholder"),
    "aria-label": t("reason") });
  const approve = el("button", { id: `approve-v${v}`, class: "primary", type: "button", disabled: serving, text: t("approve") });
  const canRollBack = applied(v) && !serving;
  const rollback = el("button", { id: `rollback-v${v}`, type: "button", disabled: !canRollBack, text: t("rollback"),
    title: canRollBack ? null : t("rollback_hint") });
  approve.addEventListener("click", () => change("approve", v, reason.value));
  rollback.addEventListener("click", () => change("rollback", v, reason.value));
  return el("div", { class: "actions" }, reason, el("div", { class: "buttons" }, approve, rollback),
    serving ? el("div", { class: "muted small", text: t("serving") }) : null);
}

async function change(kind, version, reasonText) {
  const reason = reasonText.trim();
  setMessage(null);
  if (reason.length < 3) { showError({ text: t("need_reason") }); return; }
  showError(null);
  const task = encodeURIComponent(state.task);
  let done;
  try {
    done = kind === "rollback"
      ? await api("POST", `/models/${task}/rollback`, { version, reason })
      : await api("POST", `/models/${task}/versions/${version}/approve`, { reason });
  } catch (err) {
    showError(err);
    renderView();
    return;
  }
  try {
    await Promise.all([loadTask(state.task, false), loadPromotions()]);
  } catch (err) {
    showError(err);
  }
  // Said once the page shows the state after the change.
  const applied = done.promotion.status === "applied";
  setMessage(kind === "rollback" ? "rolled_back" : applied ? "approved_applied" : "approved_first", { v: version });
  renderView();
}

function renderCharts(shown) {
  const metric = state.metric;
  const better = metric && t(LOWER_IS_BETTER.has(metric) ? "lower_better" : "higher_better");
  $("site-chart-title").textContent = metric ? t("chart_sites", { metric }) + t("paren", { x: better }) : "";
  $("gap-chart-title").textContent = metric ? t("chart_gap", { metric }) : "";
  $("round-chart-title").textContent = t("chart_rounds", { metric: metric || "" });
  const views = shown.map(versionOf);
  const sites = [...new Set(views.flatMap((v) => Object.keys(v.sites)))].sort();
  if (!metric) { ["site-chart", "gap-chart", "round-chart"].forEach((id) => $(id).replaceChildren()); return; }
  groupedBars($("site-chart"), { categories: sites, label: t("chart_sites", { metric }),
    series: views.map((v) => ({ label: t("version", { v: v.version }),
      values: Object.fromEntries(sites.map((s) => [s, (v.sites[s] || {})[metric]])) })) });
  gapBars($("gap-chart"), { label: t("chart_gap", { metric }), highlight: shown,
    versions: [...state.versions].reverse().map((v) => ({ version: v.version, gap: v.gaps[metric] ? v.gaps[metric].gap : null })) });
  const series = shown.map((v) => ({ label: t("version", { v }), points: (state.rounds[`${state.task}/${v}`] || {})[metric] || [] }));
  if (series.some((s) => s.points.length)) lines($("round-chart"), { series, label: t("chart_rounds", { metric }) });
  else $("round-chart").replaceChildren(el("p", { class: "muted", text: t("no_rounds") }));
}

// ---- approvals --------------------------------------------------------------------------------------
function approvalText(a) {
  return a.account + t("paren", { x: a.reason });
}

function renderApprovals() {
  const pending = state.promotions.filter((p) => p.status === "pending" && p.kind === "promotion");
  $("pending-empty").hidden = pending.length > 0;
  $("pending-list").replaceChildren(...pending.map((p) => {
    const first = p.approvals[0] || { account: "?", reason: "", at: "" };
    const item = el("li", { class: "pending", "data-promotion": p.id },
      el("div", { class: "pending-head" }, el("strong", { text: t("pending_line", { task: taskName(p.task), v: p.version,
        who: first.account, at: when(first.at) }) })),
      el("div", { class: "muted small", text: t("first_reason", { reason: first.reason }) }));
    if (isCommissioner()) {
      const mine = p.approvals.some((a) => a.account === state.me.name);
      const reason = el("textarea", { id: `second-reason-${p.id}`, rows: 2, maxlength: 2000, placeholder: t("reason_placeholder"),
        disabled: mine, "aria-label": t("reason") });
      const button = el("button", { id: `second-approve-${p.id}`, class: "primary", type: "button", disabled: mine,
        text: t("second_approve") });
      button.addEventListener("click", async () => {
        state.task = p.task;
        await change("approve", p.version, reason.value);
      });
      item.append(el("div", { class: "actions" }, reason, button));
      if (mine) item.append(el("div", { class: "muted small", text: t("own_approval") }));
    }
    return item;
  }));
  const history = state.promotions.filter((p) => p.status !== "pending");
  $("history-empty").hidden = history.length > 0;
  $("history-list").replaceChildren(...history.map((p) => el("li", { class: `history ${p.kind}`, "data-promotion": p.id },
    el("strong", { text: `${t(`kind_${p.kind}`)} · ${taskName(p.task)} ${t("version", { v: p.version })}` }),
    ` · ${t(`st_${p.status}`)} · ${when(p.applied_at || p.created_at)}`,
    p.previous_version ? t("from_version", { v: p.previous_version }) : "",
    el("div", { class: "muted small", text: p.approvals.map(approvalText).join(state.lang === "zh" ? "；" : "; ") }))));
}

// ---- audit ------------------------------------------------------------------------------------------
function describe(entry) {
  const d = entry.details || {}, parts = [];
  if (d.task && d.version) parts.push(t("d_version", { task: taskName(d.task), v: d.version }));
  if (entry.action === "tier-policy-edit") parts.push(...describePolicyEdit(d));
  if (d.previous_version) parts.push(t("d_previous", { v: d.previous_version }));
  if (d.approvers) parts.push(t("d_approvers", { a: d.approvers.join(", ") }));
  const reasons = d.reasons || (d.reason ? [d.reason] : []);
  if (reasons.length) parts.push(t("d_reasons", { r: reasons.join(" | ") }));
  if (d.name && d.role) parts.push(t("d_account", { name: d.name, role: t(`role_${d.role}`) }));
  if (!parts.length) parts.push(Object.entries(d).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", "));
  return parts.join(" · ");
}

function renderAudit() {
  if (!state.audit) return;
  const { entries, verdict } = state.audit;
  const box = $("verify-result");
  box.className = `verify ${verdict.ok ? "ok" : "bad"}`;
  box.textContent = !verdict.ok ? t("verify_bad", { error: verdict.error })
    : verdict.keyholder ? t("verify_ok", { n: verdict.entries, seq: verdict.anchored_seq, kh: verdict.keyholder.slice(0, 16) })
      : t("verify_ok_unanchored", { n: verdict.entries });
  $("audit-empty").hidden = entries.length > 0;
  $("audit-table").tBodies[0].replaceChildren(...[...entries].reverse().map((e) => el("tr", { "data-action": e.action, "data-seq": e.seq },
    el("td", { text: String(e.seq) }), el("td", { text: when(e.at) }), el("td", { text: e.actor }),
    el("td", { text: UI[state.lang][`act_${e.action.replace(/-/g, "_")}`] || e.action }),
    el("td", { class: "details", text: describe(e) }))));
}

// ---- controls -----------------------------------------------------------------------------------------
function bindViews() {
  const guarded = (work) => async () => {
    showError(null);
    try { await work(); } catch (err) { showError(err); }
    renderView();
  };
  $("task-select").addEventListener("change", guarded(() => loadTask($("task-select").value)));
  $("version-a").addEventListener("change", guarded(() => { state.compare[0] = $("version-a").value; return loadTask(state.task, false); }));
  $("version-b").addEventListener("change", guarded(() => { state.compare[1] = $("version-b").value; return loadTask(state.task, false); }));
  $("metric-select").addEventListener("change", () => { state.metric = $("metric-select").value; renderView(); });
  $("verify-button").addEventListener("click", guarded(loadAudit));
  let width = window.innerWidth;
  window.addEventListener("resize", () => {  // the plots are drawn at their container's width
    if (Math.abs(window.innerWidth - width) > 40 && state.me && state.view === "models") { width = window.innerWidth; renderCharts([...new Set(state.compare.filter(Boolean))]); }
  });
}
