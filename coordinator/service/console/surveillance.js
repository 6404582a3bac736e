// Fenji governance console: the surveillance view. The latest syndromic-surveillance run (GET /api/v1/
// surveillance): its alerts ranked worst first (one detector, C2 by default), the series of the alert
// chosen with its upper bound and alarms, which clinics each district's sum holds, and who declined.
// Commissioners and data scientists start a run (POST /api/v1/surveillance); it runs at the sites.
// Uses state, $(), el(), t(), fmt(), when() and api() from console.js, svgEl(), chartFrame(), yAxis()
// from charts.js. Its texts (zh first) join the console's UI table here, so the view is this one file.
"use strict";

Object.assign(UI.zh, {
  view_surveillance: "传染病监测", sv_alerts: "预警（按严重程度排序）", sv_no_alerts: "最近时段没有预警。",
  sv_none: "尚无监测结果：请在上方发起一次监测。", sv_run: "发起监测", sv_task: "任务", sv_start: "起始日",
  sv_end: "截止日", sv_interval: "时间粒度", sv_day: "按日", sv_week: "按周", sv_method: "检测方法",
  sv_runs: "监测记录", sv_where: "地区／诊所", sv_syndrome: "症候群", sv_period: "日期", sv_observed: "就诊数",
  sv_bound: "阈值", sv_severity: "超出（标准差）", sv_district: "地区 {d}", sv_clinic: "诊所 {c}（{d}）",
  sv_queued: "监测 #{id} 已提交，正在各诊所计算……", sv_failed: "监测 #{id} 失败：{reason}",
  sv_chart: "{where} · {syndrome} · {interval}", sv_counts: "就诊数", sv_upper: "{m} 阈值", sv_alarm: "{m} 预警",
  sv_hidden: "另有 {n} 条预警因数量上限未显示。", sv_sums: "各地区的数值是该地区诊所的加密求和（密钥托管方只解密足够多家诊所的和）：",
  sv_sum_line: "{d}：{sites}", sv_published: "自行发布本诊所序列：{sites}", sv_unavailable: "{d} 无数值：{reason}",
  sv_refused: "{site} 拒绝：{reason}", sv_skipped: "{n} 条序列含被抑制的小数值，未做检测。", sv_run_line: "#{id} {task} {start}–{end}（{status}）",
  sv_not_allowed: "协调方管理员只能查看监测结果",
  sv_st_queued: "排队中", sv_st_running: "计算中", sv_st_succeeded: "已完成", sv_st_failed: "失败",
});
Object.assign(UI.en, {
  view_surveillance: "Surveillance", sv_alerts: "Alerts (worst first)", sv_no_alerts: "No alert in the latest period.",
  sv_none: "No surveillance result yet: start a run above.", sv_run: "Run surveillance", sv_task: "Task",
  sv_start: "From", sv_end: "To", sv_interval: "Interval", sv_day: "Daily", sv_week: "Weekly", sv_method: "Detector",
  sv_runs: "Runs", sv_where: "District / clinic", sv_syndrome: "Syndrome", sv_period: "Date", sv_observed: "Visits",
  sv_bound: "Threshold", sv_severity: "Over (SD)", sv_district: "district {d}", sv_clinic: "clinic {c} ({d})",
  sv_queued: "Run #{id} submitted: the clinics are counting…", sv_failed: "Run #{id} failed: {reason}",
  sv_chart: "{where} · {syndrome} · {interval}", sv_counts: "visits", sv_upper: "{m} threshold", sv_alarm: "{m} alarm",
  sv_hidden: "{n} more alerts not shown (capped).", sv_sums: "Each district's numbers are its clinics' encrypted sum "
    + "(the key holder decrypts only sums over enough clinics):", sv_sum_line: "{d}: {sites}",
  sv_published: "Publish their own series: {sites}", sv_unavailable: "{d} has no numbers: {reason}",
  sv_refused: "{site} declined: {reason}", sv_skipped: "{n} series hold suppressed small counts: not run.",
  sv_run_line: "#{id} {task} {start}–{end} ({status})", sv_not_allowed: "Coordinator admins may only read surveillance",
  sv_st_queued: "queued", sv_st_running: "running", sv_st_succeeded: "done", sv_st_failed: "failed",
});

const SV_METHODS = ["C1", "C2", "C3"];
const sv = { runs: [], run: null, interval: "day", method: null, key: null, polling: null };

async function loadSurveillance() {
  sv.runs = await api("GET", "/surveillance?limit=20");
  const shown = sv.run && sv.runs.find((r) => r.id === sv.run.id && r.status === "succeeded");
  sv.run = shown || sv.runs.find((r) => r.status === "succeeded") || null;
  if (!shown) sv.key = null;
}

const svResult = () => (sv.run ? sv.run.result : null);
const svMethod = () => sv.method || (svResult() ? svResult().method : "C2");
const svTitle = (code) => { const titles = (svResult() || {}).syndrome_titles || {}; return (titles[code] || {})[state.lang] || code; };
const svWhere = (a) => (a.level === "district" ? t("sv_district", { d: a.unit }) : t("sv_clinic", { c: a.unit, d: a.district }));

function svAlerts() {
  const result = svResult();
  if (!result) return [];
  return result.alerts.filter((a) => a.method === svMethod() && a.interval === sv.interval)
    .sort((a, b) => (b.severity ?? Infinity) - (a.severity ?? Infinity));
}

function svSeries(key) {
  const result = svResult();
  if (!result || !key) return null;
  const block = result.series.find((s) => s.interval === sv.interval && s.level === key.level && s.unit === key.unit);
  return block && block.syndromes[key.syndrome] ? { block, data: block.syndromes[key.syndrome] } : null;
}

function svChoose() {
  if (svSeries(sv.key)) return;
  const [top] = svAlerts();
  const first = (svResult() || { series: [] }).series.find((s) => s.interval === sv.interval);
  sv.key = top ? { level: top.level, unit: top.unit, syndrome: top.syndrome }
    : first ? { level: first.level, unit: first.unit, syndrome: Object.keys(first.syndromes)[0] } : null;
}

function svControls() {
  const result = svResult(), query = result ? result.query : null, canRun = state.me && state.me.role !== "coordinator_admin";
  const today = new Date().toISOString().slice(0, 10);
  const start = el("input", { id: "sv-start", type: "date", value: query ? query.start : today });
  const end = el("input", { id: "sv-end", type: "date", value: query ? query.end : today });
  const task = el("input", { id: "sv-task", value: sv.run ? sv.run.task : "triage", size: 14, spellcheck: "false" });
  const run = el("button", { id: "sv-run", type: "button", class: "primary", disabled: !canRun, title: canRun ? null : t("sv_not_allowed"),
    text: t("sv_run") });
  run.addEventListener("click", () => svSubmit(task.value.trim(), start.value, end.value));
  const runs = el("select", { id: "sv-runs" }, ...sv.runs.map((r) => el("option", { value: r.id, selected: sv.run && r.id === sv.run.id,
    text: t("sv_run_line", { id: r.id, task: r.task, start: r.query.start, end: r.query.end, status: t(`sv_st_${r.status}`) }) })));
  runs.addEventListener("change", () => { const r = sv.runs.find((x) => String(x.id) === runs.value); if (r && r.status === "succeeded") { sv.run = r; sv.key = null; renderSurveillance(); } });
  const interval = el("select", { id: "sv-interval" }, ...["day", "week"].map((i) => el("option", { value: i, selected: i === sv.interval, text: t(`sv_${i}`) })));
  interval.addEventListener("change", () => { sv.interval = interval.value; renderSurveillance(); });
  const method = el("select", { id: "sv-method" }, ...SV_METHODS.map((m) => el("option", { value: m, selected: m === svMethod(), text: m })));
  method.addEventListener("change", () => { sv.method = method.value; sv.key = null; renderSurveillance(); });
  const label = (key, input) => el("label", {}, el("span", { text: t(key) }), input);
  return el("div", { class: "controls card" }, label("sv_task", task), label("sv_start", start), label("sv_end", end), run,
    label("sv_runs", runs), label("sv_interval", interval), label("sv_method", method));
}

function svAlertTable() {
  const alerts = svAlerts(), result = svResult();
  const head = el("tr", {}, ...["#", "sv_where", "sv_syndrome", "sv_period", "sv_observed", "sv_bound", "sv_severity"]
    .map((k) => el("th", { text: k === "#" ? "#" : t(k) })));
  const rows = alerts.map((a, i) => {
    const row = el("tr", { class: sv.key && a.unit === sv.key.unit && a.syndrome === sv.key.syndrome ? "selected" : null },
      el("td", { text: String(i + 1) }), el("td", { text: svWhere(a) }), el("td", { text: svTitle(a.syndrome) }),
      el("td", { text: a.period }), el("td", { text: fmt(a.observed) }), el("td", { text: fmt(a.upperbound) }),
      el("td", { class: "sv-severity", text: fmt(a.severity) }));
    row.addEventListener("click", () => { sv.key = { level: a.level, unit: a.unit, syndrome: a.syndrome }; renderSurveillance(); });
    return row;
  });
  const hidden = result ? result.hidden[`${svMethod()}/${sv.interval}`] || 0 : 0;
  return el("section", { class: "card table-card" }, el("h2", { text: t("sv_alerts") }),
    alerts.length ? el("table", { id: "sv-alerts", class: "sv-alerts" }, el("thead", {}, head), el("tbody", {}, ...rows))
      : el("p", { class: "muted", text: t("sv_no_alerts") }),
    hidden ? el("p", { class: "muted small", text: t("sv_hidden", { n: hidden }) }) : null);
}

// Counts as a line, the detector's upper bound dashed, its alarms as red dots.
function svChart(host, series) {
  const { block, data } = series, n = block.periods.length, method = svMethod();
  const height = 260, left = 44, top = 26, bottom = 34;
  const { svg, width } = chartFrame(host, height, t("sv_chart", { where: svWhere({ ...block }), syndrome: svTitle(sv.key.syndrome), interval: t(`sv_${sv.interval}`) }));
  const detector = data.detectors[method] || { alarms: [], upperbound: [] };
  const bound = detector.upperbound.map((b) => (b == null ? NaN : Math.max(0, b)));
  const hi = Math.max(1, ...data.counts, ...bound.filter(Number.isFinite)) * 1.1;
  const plotH = height - top - bottom, plotW = width - left - 16;
  yAxis(svg, [0, hi], left, top, plotH, width);
  const x = (i) => left + (n <= 1 ? plotW / 2 : (i / (n - 1)) * plotW), y = (v) => top + plotH - (v / hi) * plotH;
  const step = Math.max(1, Math.ceil(n / 7));
  for (let i = 0; i < n; i += step) svg.append(svgEl("text", { x: x(i), y: height - bottom + 16, "text-anchor": "middle", class: "tick" }, block.periods[i]));
  svg.append(svgEl("polyline", { points: data.counts.map((c, i) => `${x(i)},${y(c)}`).join(" "), fill: "none", stroke: "#37474f",
    "stroke-width": 1.5, class: "sv-counts" }));
  const segments = bound.map((b, i) => (Number.isFinite(b) ? `${x(i)},${y(b)}` : null)).filter(Boolean);
  if (segments.length) svg.append(svgEl("polyline", { points: segments.join(" "), fill: "none", stroke: "#ef6c00", "stroke-width": 1.2, "stroke-dasharray": "5 4", class: "sv-bound" }));
  for (const i of detector.alarms) {
    const dot = svgEl("circle", { cx: x(i), cy: y(data.counts[i]), r: 4.5, fill: "#c62828", class: "sv-alarm" });
    dot.append(svgEl("title", {}, `${block.periods[i]}: ${data.counts[i]} > ${fmt(detector.upperbound[i])}`));
    svg.append(dot);
  }
  const keys = [["#37474f", t("sv_counts")], ["#ef6c00", t("sv_upper", { m: method })], ["#c62828", t("sv_alarm", { m: method })]];
  keys.forEach(([colour, text], k) => {
    svg.append(svgEl("rect", { x: left + k * 130, y: 5, width: 10, height: 10, fill: colour }));
    svg.append(svgEl("text", { x: left + k * 130 + 14, y: 14, class: "legend" }, text));
  });
}

function svNotes() {
  const result = svResult(), lines = [];
  lines.push(t("sv_sums"));
  for (const [d, sites] of Object.entries(result.districts)) lines.push(t("sv_sum_line", { d, sites: sites.join(", ") }));
  const published = Object.keys(result.published);
  if (published.length) lines.push(t("sv_published", { sites: published.join(", ") }));
  for (const [d, reason] of Object.entries(result.unavailable)) lines.push(t("sv_unavailable", { d, reason }));
  for (const [site, reason] of Object.entries(result.refused)) lines.push(t("sv_refused", { site, reason }));
  if (result.skipped.length) lines.push(t("sv_skipped", { n: result.skipped.length }));
  return el("section", { class: "card" }, ...lines.map((text) => el("p", { class: "muted small sv-note", text })));
}

function renderSurveillance() {
  const view = $("surveillance-view"), parts = [svControls()];
  const pending = sv.runs.find((r) => r.status === "queued" || r.status === "running");
  const failed = sv.runs[0] && sv.runs[0].status === "failed" ? sv.runs[0] : null;
  if (pending) parts.push(el("p", { class: "muted", id: "sv-status", text: t("sv_queued", { id: pending.id }) }));
  if (failed) parts.push(el("p", { class: "error-text", text: t("sv_failed", { id: failed.id, reason: failed.reason }) }));
  if (!svResult()) {
    parts.push(el("p", { class: "muted card", text: t("sv_none") }));
  } else {
    svChoose();
    const chart = el("div", { id: "sv-chart" }), series = svSeries(sv.key);
    parts.push(svAlertTable(), el("figure", { class: "card chart wide" }, el("figcaption", { text: series
      ? t("sv_chart", { where: svWhere(series.block), syndrome: svTitle(sv.key.syndrome), interval: t(`sv_${sv.interval}`) }) : "" }), chart), svNotes());
    view.replaceChildren(...parts);
    if (series) svChart(chart, series);
    svPoll(pending);
    return;
  }
  view.replaceChildren(...parts);
  svPoll(pending);
}

async function svSubmit(task, start, end) {
  showError(null);
  try {
    await api("POST", "/surveillance", { task, start, end });
    await loadSurveillance();
  } catch (err) {
    showError(err);
  }
  renderSurveillance();
}

// While a run is queued or running, look again every two seconds (only while this view is shown).
function svPoll(pending) {
  clearTimeout(sv.polling);
  if (!pending) return;
  sv.polling = setTimeout(async () => {
    if (state.view !== "surveillance" || !state.me) return;
    try { await loadSurveillance(); } catch (err) { showError(err); return; }
    const done = sv.runs.find((r) => r.id === pending.id);
    if (done && done.status === "succeeded") { sv.run = done; sv.key = null; }
    renderSurveillance();
  }, 2000);
}

// The console's view switch (loadView in views.js, renderView in console.js) knows the views it was
// written with; this view joins it by wrapping both, so that it lives in this file alone.
const loadViewBeforeSurveillance = loadView;
loadView = async function loadViewWithSurveillance(view) {
  return view === "surveillance" ? loadSurveillance() : loadViewBeforeSurveillance(view);
};
const renderViewBeforeSurveillance = renderView;
renderView = function renderViewWithSurveillance() {
  if (state.view !== "surveillance") return renderViewBeforeSurveillance();
  renderSurveillance();
  return renderPendingCount();
};
