// Fenji governance console: ROC and calibration per site, for the versions compared (GET /api/v1/models/
// {task}/versions/{v}/curves). Each site gets two small plots, the compared versions overlaid in their
// series colours: the ROC points at the thresholds the site kept, and its calibration bins (mean predicted
// score against the observed rate, the dot's area by the bin's rows). The curves are of the binary view
// the task declares (the response's `view`): the positive class (referral risk), the top label's
// confidence against "right or not" (diagnosis), or triage level c or more urgent (triage); the view is
// named above the plots and in each count and tooltip. Only what the sites released: counts rounded, cells
// under a site's minimum n merged away. Uses state, $(), el(), t(), fmt() and api() from console.js,
// svgEl() and SERIES_COLOURS from charts.js. Its texts (zh first) are here.
"use strict";

Object.assign(UI.zh, {
  curves_title: "各站点的 ROC 曲线与校准图（按站点发布的计数绘制）",
  curves_none: "这些版本没有站点发布曲线：站点有、无该二分类事件的留出病例都须达到其最小样本量（多分类与分级任务按其声明的二分类视角发布）。",
  curves_view: "曲线的二分类视角：{view}",
  "view_positive-class": "正类概率（是否为正类）", "view_top-label": "最高类别置信度（是否正确）",
  "view_at-or-above": "≤ {level} 级的概率（{level} 级或更紧急）",
  "score_positive-class": "风险", "score_top-label": "置信度", "score_at-or-above": "P(≤{level} 级)",
  "axis_positive-class": "预测风险", "axis_top-label": "最高类别置信度", "axis_at-or-above": "预测 P(≤{level} 级)",
  "counts_positive-class": "版本 {v}：阳性 {p}，阴性 {n}", "counts_top-label": "版本 {v}：正确 {p}，错误 {n}",
  "counts_at-or-above": "版本 {v}：≤{level} 级 {p}，其余 {n}",
  curves_note: "阈值由协议固定（0.05–0.95），站点只在每格两类病例都不少于其最小样本量时才在该处切分；计数取整到 5，"
    + "过小的区间与相邻区间合并，所以小站点的点较少。校准图中圆点面积对应区间病例数，对角线为完美校准。",
  curves_roc: "ROC", curves_calibration: "校准", curves_fpr: "假阳性率", curves_tpr: "真阳性率",
  curves_observed: "实际比例",
  curves_missing: "版本 {v}：未发布", curves_roc_point: "版本 {v} · {score} ≥ {th}：真阳性率 {tpr}，假阳性率 {fpr}",
  curves_bin: "版本 {v} · {low}–{high}：预测 {pred}，实际 {obs}（{rows} 例）",
});
Object.assign(UI.en, {
  curves_title: "ROC and calibration per site (drawn from the counts each site released)",
  curves_none: "No site released curves for these versions: a site needs at least its minimum n of held-out patients "
    + "with and without the binary event (multiclass and ordinal tasks release the binary view they declare).",
  curves_view: "Binary view of the curves: {view}",
  "view_positive-class": "probability of the positive class", "view_top-label": "top-label confidence (correct or not)",
  "view_at-or-above": "P(level ≤ {level}): level {level} or more urgent",
  "score_positive-class": "risk", "score_top-label": "confidence", "score_at-or-above": "P(level ≤ {level})",
  "axis_positive-class": "predicted risk", "axis_top-label": "top-label confidence",
  "axis_at-or-above": "predicted P(level ≤ {level})",
  "counts_positive-class": "v{v}: {p} positives, {n} negatives", "counts_top-label": "v{v}: {p} correct, {n} wrong",
  "counts_at-or-above": "v{v}: {p} at level ≤ {level}, {n} others",
  curves_note: "Thresholds are fixed by the protocol (0.05–0.95); a site cuts only where each cell holds at least its "
    + "minimum n patients of each class. Counts are rounded to 5 and small ranges merged with their neighbours, so a "
    + "small site shows fewer points. A calibration dot's area is its bin's rows; the diagonal is perfect calibration.",
  curves_roc: "ROC", curves_calibration: "Calibration", curves_fpr: "false-positive rate", curves_tpr: "true-positive rate",
  curves_observed: "observed rate",
  curves_missing: "v{v}: not released", curves_roc_point: "v{v} · {score} ≥ {th}: TPR {tpr}, FPR {fpr}",
  curves_bin: "v{v} · {low}–{high}: predicted {pred}, observed {obs} ({rows} rows)",
});

const CURVES = {};  // task/version -> GET .../curves (a version's curves never change)
const POSITIVE_VIEW = { kind: "positive-class" };
const CURVE_SIZE = 168, CURVE_PAD = 30;

async function loadCurves() {
  const key = (v) => `${state.task}/${v}`;
  const wanted = [...new Set(state.compare.filter((v) => v && !(key(v) in CURVES)))];
  const found = await Promise.all(wanted.map((v) => api("GET", `/models/${encodeURIComponent(state.task)}/versions/${v}/curves`)));
  wanted.forEach((v, i) => { CURVES[key(v)] = found[i]; });
}

// A view's text of the given family (view_, score_, axis_, counts_), its cut class filled in.
function viewText(family, view, params = {}) {
  const v = view || POSITIVE_VIEW;
  return t(`${family}_${v.kind}`, { level: v.cut_class ?? (v.cut_index ?? 0) + 1, ...params });
}

// A unit square plot: axes 0..1 with ticks at 0, 0.5, 1, the diagonal, and axis titles.
function unitPlot(kind, xTitle, yTitle, label) {
  const size = CURVE_SIZE, pad = CURVE_PAD, inner = size - pad - 8;
  const svg = svgEl("svg", { viewBox: `0 0 ${size} ${size}`, width: size, height: size, role: "img",
    "aria-label": label, class: `curve ${kind}` });
  const x = (v) => pad + v * inner, y = (v) => 8 + inner - v * inner;
  for (const v of [0, 0.5, 1]) {
    svg.append(svgEl("line", { x1: x(v), x2: x(v), y1: y(0), y2: y(1), class: "grid" }));
    svg.append(svgEl("line", { x1: x(0), x2: x(1), y1: y(v), y2: y(v), class: "grid" }));
    svg.append(svgEl("text", { x: x(v), y: y(0) + 12, "text-anchor": "middle", class: "tick" }, String(v)));
    svg.append(svgEl("text", { x: x(0) - 4, y: y(v) + 4, "text-anchor": "end", class: "tick" }, String(v)));
  }
  svg.append(svgEl("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "diagonal" }));
  svg.append(svgEl("text", { x: x(0.5), y: size - 2, "text-anchor": "middle", class: "axis-title" }, xTitle));
  svg.append(svgEl("text", { x: 9, y: y(0.5), "text-anchor": "middle", class: "axis-title",
    transform: `rotate(-90 9 ${y(0.5)})` }, yTitle));
  return { svg, x, y };
}

function curveDot(plot, cx, cy, r, index, cls, title) {
  const node = svgEl("circle", { cx, cy, r, fill: SERIES_COLOURS[index % 4], class: `${cls} series-${index}` });
  node.append(svgEl("title", {}, title));
  plot.svg.append(node);
}

function rocPlot(site, series) {
  const plot = unitPlot("roc", t("curves_fpr"), t("curves_tpr"), `${site} · ${t("curves_roc")}`);
  series.forEach(({ v, index, curves }) => {
    if (!curves) return;
    const colour = SERIES_COLOURS[index % 4];
    plot.svg.append(svgEl("polyline", { points: curves.roc.map((p) => `${plot.x(p.fpr)},${plot.y(p.tpr)}`).join(" "),
      fill: "none", stroke: colour, "stroke-width": 2, class: `roc-line series-${index}` }));
    for (const p of curves.roc.filter((q) => q.threshold > 0 && q.threshold < 1)) {
      curveDot(plot, plot.x(p.fpr), plot.y(p.tpr), 3, index, "roc-point", t("curves_roc_point",
        { v, score: viewText("score", curves.view), th: p.threshold.toFixed(2), tpr: fmt(p.tpr), fpr: fmt(p.fpr) }));
    }
  });
  return plot.svg;
}

function calibrationPlot(site, series, view) {
  const plot = unitPlot("calibration", viewText("axis", view), t("curves_observed"), `${site} · ${t("curves_calibration")}`);
  const most = Math.max(1, ...series.flatMap((s) => (s.curves ? s.curves.calibration.map((b) => b.rows) : [])));
  series.forEach(({ v, index, curves }) => {
    if (!curves || !curves.calibration.length) return;
    plot.svg.append(svgEl("polyline", { fill: "none", stroke: SERIES_COLOURS[index % 4], "stroke-width": 1.2,
      "stroke-opacity": 0.6, points: curves.calibration.map((b) => `${plot.x(b.mean_predicted)},${plot.y(b.observed)}`).join(" ") }));
    for (const b of curves.calibration) {
      curveDot(plot, plot.x(b.mean_predicted), plot.y(b.observed), 2.5 + 5 * Math.sqrt(b.rows / most), index, "cal-bin",
        t("curves_bin", { v, low: b.low.toFixed(2), high: b.high.toFixed(2), pred: fmt(b.mean_predicted),
          obs: fmt(b.observed), rows: b.rows }));
    }
  });
  return plot.svg;
}

function renderCurves(shown) {
  $("curves-title").textContent = t("curves_title");
  const of = (v) => (CURVES[`${state.task}/${v}`] || {}).sites || {};
  const sites = [...new Set(shown.flatMap((v) => Object.keys(of(v))))].sort();
  if (!sites.length) {
    $("curves").replaceChildren(el("p", { class: "muted", text: t("curves_none") }));
    return;
  }
  // The view of each version shown (the same for all in practice: the task's protocol fixes it).
  const views = shown.map((v) => (CURVES[`${state.task}/${v}`] || {}).view).filter(Boolean);
  const named = [...new Set(views.map((view) => viewText("view", view)))].join(" · ");
  $("curves").replaceChildren(el("p", { class: "curves-view", text: t("curves_view", { view: named || viewText("view") }) }),
    el("p", { class: "muted small", text: t("curves_note") }), el("div", { class: "curve-grid" },
    ...sites.map((site) => {
      const series = shown.map((v, index) => ({ v, index, curves: of(v)[site] || null }));
      const counts = series.map(({ v, curves }) => (curves ? viewText("counts", curves.view, { v, p: curves.positives,
        n: curves.negatives }) : t("curves_missing", { v }))).join(" · ");
      return el("div", { class: "site-curves", "data-site": site }, el("h3", { text: site }),
        el("div", { class: "muted small", text: counts }),
        el("div", { class: "curve-pair" }, rocPlot(site, series), calibrationPlot(site, series, views[0])));
    })));
}
