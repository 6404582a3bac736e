// Fenji governance console: the sites view. Each clinic with when it was enrolled and last seen, and
// the latest report it sent with a run (GET /api/v1/sites): rows and quarantine rate as buckets, its
// decisions, its privacy budget as a bar (spent against left) and its released decision-quality review
// (commissioners only; the others are told it is withheld). Uses state, $(), el(), t(), fmt(), when()
// and api() from console.js and svgEl() from charts.js.
"use strict";

const STALE_DAYS = 7;  // a site not heard from for longer is marked

async function loadSites() {
  state.sites = await api("GET", "/sites");
}

const rangeText = (bucket, format) => (!bucket ? "—"
  : bucket.high == null ? `≥ ${format(bucket.low)}` : `${format(bucket.low)}–${format(bucket.high)}`);
const rowsText = (bucket) => rangeText(bucket && { low: bucket.low, high: bucket.high == null ? null : bucket.high - 1 },
  (x) => x.toLocaleString(state.lang === "zh" ? "zh-CN" : "en"));
const percent = (x) => `${Math.round(x * 1000) / 10}%`;
const epsilon = (x) => (Math.round(x * 100) / 100).toString();

function stale(iso) {
  return !iso || Date.now() - Date.parse(iso) > STALE_DAYS * 86400e3;
}

function budgetBar(budget) {
  if (!budget) return el("span", { class: "muted", text: "—" });
  const width = 120, height = 12, total = Math.max(budget.total, budget.spent + budget.left, 1e-9);
  const used = Math.min(width, (width * budget.spent) / total);
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "budget-bar",
    "aria-label": t("budget_line", { spent: epsilon(budget.spent), total: epsilon(budget.total), left: epsilon(budget.left) }) });
  svg.append(svgEl("rect", { x: 0, y: 0, width, height, class: "budget-left" }));
  svg.append(svgEl("rect", { x: 0, y: 0, width: used, height, class: "budget-spent" }));
  return el("div", { class: "budget" }, svg, el("span", { class: "small", text: t("budget_line",
    { spent: epsilon(budget.spent), total: epsilon(budget.total), left: epsilon(budget.left) }) }));
}

function qualityCells(site) {
  if (site.withheld.includes("quality")) {
    return [el("td", { class: "muted small quality-withheld", colspan: 4, text: t("quality_withheld") })];
  }
  const quality = (site.report && site.report.quality) || {};
  return ["over_referral_rate", "under_referral_rate", "agreement_rate", "decisions"].map((k) => el("td", { class: `quality q-${k}`,
    text: quality[k] == null ? "—" : k === "decisions" ? String(quality[k]) : percent(quality[k]) }));
}

function siteRow(site) {
  const r = site.report;
  const runs = r && r.runs_accepted != null ? `${r.runs_accepted} / ${r.runs_refused}` : "—";
  return el("tr", { "data-site": site.site, class: stale(site.last_seen) ? "stale" : null },
    el("th", { text: site.site }),
    el("td", { class: "when", text: site.last_seen ? when(site.last_seen) : t("never_seen") }),
    el("td", { text: r ? rowsText(r.rows) : "—", title: r ? taskName(r.task) : null, class: "rows" }),
    el("td", { class: "quarantine", text: r ? rangeText(r.quarantine_rate, percent) : "—" }),
    el("td", { class: "plans", text: r && r.plans_approved != null ? String(r.plans_approved) : "—" }),
    el("td", { class: "runs", text: runs }),
    el("td", { class: "budget-cell" }, budgetBar(r && r.budget)),
    ...qualityCells(site),
    el("td", { class: "small muted report" }, ...(r ? [el("div", { text: when(r.received_at) }), el("div", { text: taskName(r.task) })]
      : ["—"])),
    el("td", {}, el("code", { class: "small", title: site.audit_head, text: site.audit_head ? `${site.audit_head.slice(0, 12)}…` : "—" })));
}

function renderSites() {
  const sites = state.sites || [];
  $("sites-empty").hidden = sites.length > 0;
  const seen = sites.filter((s) => !stale(s.last_seen)).length;
  $("sites-summary").textContent = sites.length ? t("sites_summary", { n: sites.length, seen, days: STALE_DAYS }) : "";
  $("sites-table").hidden = sites.length === 0;
  $("sites-table").tHead.replaceChildren(
    el("tr", {}, el("th", { rowspan: 2, text: t("site") }), el("th", { rowspan: 2, text: t("last_seen") }),
      el("th", { rowspan: 2, text: t("rows_bucket") }), el("th", { rowspan: 2, text: t("quarantine_rate") }),
      el("th", { rowspan: 2, text: t("plans_approved") }), el("th", { rowspan: 2, text: t("runs_accepted_refused") }),
      el("th", { rowspan: 2, text: t("privacy_budget") }), el("th", { colspan: 4, class: "group", text: t("quality_title") }),
      el("th", { rowspan: 2, text: t("latest_report") }), el("th", { rowspan: 2, text: t("audit_head") })),
    el("tr", {}, ...["q_over", "q_under", "q_agree", "q_decisions"].map((k) => el("th", { text: t(k) }))));
  $("sites-table").tBodies[0].replaceChildren(...sites.map(siteRow));
}
