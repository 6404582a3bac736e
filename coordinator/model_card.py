"""The model card every registered model version carries (markdown for people, JSON for programs)."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from models.policy import TierPolicy

__all__ = ["build_model_card"]

LIMITS = [
    "Decision support for a doctor at the first visit; it does not diagnose and does not replace clinical judgement.",
    "Valid only for patients like those of the training sites; a new site should check its own metrics "
    "(the node agent's held-out evaluation) before relying on it.",
    "A feature a site never records (e.g. SpO2 without a pulse oximeter) is scored as 'not recorded', which "
    "carries less information: predictions there are less sharp.",
    "Metrics on sites with few held-out rows are noisy (a few dozen rows give about ±0.05 AUROC).",
    "Calibration is fitted on the sites' training rows (one encrypted round); site-level personalisation, "
    "where a site chose it, stays at that site and is not part of this version.",
    "Not validated prospectively; labels are as recorded by the sites (triage and outcome labels are noisy).",
]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def build_model_card(outcome, *, name: str, version: str, sites: dict[str, dict] | None = None,
                     policy: TierPolicy | None = None, extra: dict | None = None) -> tuple[str, dict]:
    """``(markdown, json)`` of the card of ``outcome`` registered as ``name`` version ``version``."""
    spec = outcome.task
    metric = "auroc"
    secondary = {"ordinal": "kappa", "multiclass": "top3-accuracy"}.get(spec.label.kind)
    sites = sites or {s: {"global": m, "test_rows": int(m.get("n", 0))} for s, m in outcome.sites.items()}
    card = {
        "model": {"name": name, "version": version, "task": spec.name, "family": spec.model.family,
                  "label": spec.label.model_dump(mode="json", exclude={"class_display"}),
                  "features": [f.name for f in spec.features]},
        "intended_use": spec.description.strip(),
        "training": {"federated": True, "encrypted": outcome.encrypted, "rounds": len(outcome.rounds),
                     "sites": sorted(outcome.sites), "train_rows": outcome.train_rows,
                     "seconds": round(outcome.seconds, 1), **(extra or {})},
        "per_site": sites,
        "calibration": outcome.calibration.to_dict(),
        "tier_policy": policy.model_dump() if policy else None,
        "known_limits": LIMITS,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    lines = [
        f"# Model card: {name} version {version}", "",
        "## Intended use", card["intended_use"], "",
        f"Predicts **{spec.label.name}** ({spec.label.kind}: {', '.join(spec.label.classes)}) from "
        f"{len(spec.features)} first-visit features: {', '.join(f.name for f in spec.features)}.", "",
        "## Training",
        f"Federated across {len(outcome.sites)} sites, {len(outcome.rounds)} rounds of "
        f"{'CKKS-encrypted ' if outcome.encrypted else ''}FedAvg; model family {spec.model.family}. "
        "No site's rows or individual update left the site in clear.", "",
        "## Performance per site (held-out rows)",
        "| site | train rows | test rows | global | personalised | local-only | pooled"
        + (f" | {secondary} (global)" if secondary else "") + " | ECE global | ECE personalised | site's choice |",
        "|---|---:|---:|---:|---:|---:|---:" + ("|---:" if secondary else "") + "|---:|---:|---|",
    ]
    for site, s in sites.items():
        g, p = s.get("global", {}), s.get("personalised", {})
        row = [site, outcome.train_rows.get(site, "–"), s.get("test_rows", "–"), g.get(metric, math.nan),
               p.get(metric, math.nan), s.get("local_only", {}).get(metric, math.nan),
               s.get("pooled", {}).get(metric, math.nan)]
        if secondary:
            row.append(g.get(secondary, math.nan))
        row += [g.get("ece", math.nan), p.get("ece", math.nan), s.get("personalisation", "global")]
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    cal = outcome.calibration
    lines += ["", f"Metric: {'AUROC' if spec.label.kind == 'binary' else 'macro one-vs-rest AUROC'}; "
              "ECE: expected calibration error, 10 bins.", "", "## Calibration",
              {"platt": f"Platt scaling fitted federatedly: slope {cal.slope:.3f}, intercept {cal.intercept:+.3f}.",
               "temperature": f"Temperature scaling fitted federatedly: T = {cal.temperature:.3f}.",
               "none": "None."}[cal.kind], ""]
    if policy:
        lines += ["## Tier policy (governance settings)",
                  f"Tertiary if triage level ≤ {policy.tertiary.triage_at_most} or risk ≥ {policy.tertiary.risk_at_least:.0%}; "
                  f"county if triage level ≤ {policy.county.triage_at_most} or risk ≥ {policy.county.risk_at_least:.0%}; "
                  "otherwise community.", ""]
    lines += ["## Known limits", *(f"- {limit}" for limit in LIMITS), ""]
    return "\n".join(lines), card
