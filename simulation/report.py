"""Per-site results of a federated run: global vs personalised vs local-only vs pooled, as JSON and tables.

For each site: the calibrated **global** model; the site's **personalised** model (what the site
would serve: the global model, or its own adaptation if that won on the site's validation rows);
a **local-only** model trained on the site alone with the same budget; and the **pooled** reference
(all sites' rows in one place, which only a simulation can compute). All on the site's held-out rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.table import Column, Table

from models.spec import TaskSpec

__all__ = ["headline_metrics", "mean_finite", "render", "site_report", "summarise"]

MODELS = ("local_only", "global", "personalised", "pooled")
MODEL_TITLES = {"local_only": "local-only", "global": "global", "personalised": "personalised", "pooled": "pooled"}


def mean_finite(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return float(arr.mean()) if arr.size else float("nan")


def headline_metrics(spec: TaskSpec) -> list[str]:
    """The metrics a task is judged on: AUROC (macro for several classes), plus kappa for ordinal
    labels and top-3 accuracy for multiclass ones."""
    extra = {"ordinal": ["kappa"], "multiclass": ["top3-accuracy"]}.get(spec.label.kind, [])
    return ["auroc", *extra]


def site_report(outcome, pooled: dict[str, dict[str, float]] | None) -> dict[str, dict]:
    """Per site: test rows, training rows, personalisation choice and the four models' metrics."""
    sites = {}
    for site, m in outcome.sites.items():
        own = {k: v for k, v in m.items()
               if not k.startswith(("local-", "personal-")) and k != "num-examples"}  # the global model's
        sites[site] = {
            "test_rows": int(m.get("n", 0)),
            "train_rows": int(outcome.train_rows.get(site, 0)),
            "personalisation": outcome.personalisation.get(site, "global"),
            "local_only": {k[6:]: v for k, v in m.items() if k.startswith("local-")},
            "global": own,
            "personalised": {k[9:]: v for k, v in m.items() if k.startswith("personal-")},
            "pooled": (pooled or {}).get(site, {}),
        }
    return sites


def summarise(spec: TaskSpec, sites: dict[str, dict]) -> dict:
    """Means over sites, and the two claims a federated run is held to, on AUROC (and kappa for an
    ordinal label): the site's model (personalised) beats the site's local-only model at every
    site, and comes within 0.02 of pooled training on average."""
    out: dict = {"means": {}, "claims": {}}
    for metric in [*headline_metrics(spec), "ece"]:
        out["means"][metric] = {model: mean_finite([s[model].get(metric, math.nan) for s in sites.values()])
                                for model in MODELS}
    for metric in headline_metrics(spec):
        if metric == "top3-accuracy":
            continue  # reported, not a claim
        losers = [name for name, s in sites.items()
                  if not s["personalised"].get(metric, math.nan) > s["local_only"].get(metric, math.nan)
                  and np.isfinite(s["local_only"].get(metric, math.nan))]
        gap = out["means"][metric]["pooled"] - out["means"][metric]["personalised"]
        out["claims"][metric] = {"beats_local_only_at_every_site": not losers, "sites_not_beating_local": losers,
                                 "gap_to_pooled": gap, "within_0.02_of_pooled": bool(gap <= 0.02)}
    return out


def _fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def render(spec: TaskSpec, sites: dict[str, dict], summary: dict, title: str) -> list[Table]:
    """One table per headline metric (and a calibration table), with a mean row."""
    tables = []
    for metric in [*headline_metrics(spec), "ece"]:
        name = {"auroc": "AUROC" if spec.label.kind == "binary" else "macro AUROC", "kappa": "quadratic kappa",
                "top3-accuracy": "top-3 accuracy", "ece": "ECE (lower is better)"}[metric]
        table = Table(Column("site", no_wrap=True), "test rows", *(MODEL_TITLES[m] for m in MODELS),
                      title=f"{title}: {name}")
        if metric == "auroc":
            table.add_column("site's choice")
        for site, s in sites.items():
            row = [site, str(s["test_rows"]), *(_fmt(s[m].get(metric)) for m in MODELS)]
            if metric == "auroc":
                row.append(s["personalisation"])
            table.add_row(*row)
        means = summary["means"][metric]
        row = ["[bold]mean[/]", "", *(f"[bold]{_fmt(means[m])}[/]" for m in MODELS)]
        table.add_row(*row, *([""] if metric == "auroc" else []))
        tables.append(table)
    return tables

