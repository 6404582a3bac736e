"""``fenji demo`` after its runs: each clinic without and with the complaint text, and what it serves.

The demo trains each clinical task twice: without, and with the free-text chief complaint (its
``*_text`` variant, ``models/tasks/*_text.yaml``). Then each clinic does what its admin would do with
``fenji node use-model``, ``fenji node serve`` (the fetch) and ``fenji node personalise``: for each of
the advisor's three slots it personalises both approved versions on its own training rows and keeps
the one whose personalised model has the lower log loss on the held-back fifth of those rows
(``node_agent.local.personalise``; the same rows for both variants). The choice is the clinic's, made
on its own rows, and nothing of it leaves the clinic. What it then serves is what ``fenji node serve``
serves there (``node_agent.personalised.apply_personalisation``), scored on the clinic's held-out rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path

from rich import box
from rich.table import Column, Table

from fenji.run_report import console
from models.advisor import TASKS
from simulation.report import MODEL_TITLES, MODELS, mean_finite

__all__ = ["Served", "per_clinic_tables", "serve_at_clinics", "served_json", "summary_markdown", "with_text_variants"]

TEXT = "_text"
TITLES = {"local_only": "local-only", "global": "global (encrypted)", "personalised": "personalised", "pooled": "pooled"}
METRIC_NAMES = {"auroc": "AUROC", "kappa": "quadratic kappa", "top3-accuracy": "top-3 accuracy", "ece": "ECE"}
WORKERS = 2  # clinics served in parallel
SUMMARY_ROWS = (("auroc", None), ("kappa", "ordinal"), ("top3-accuracy", "multiclass"), ("ece", "binary"))


@dataclass
class Served:
    """What one slot of one clinic's scoring service serves after the demo."""

    task: str  # the registered task in the slot: the slot's own, or its ``*_text`` variant
    version: str  # as each answer names it ("1+site.<sha>" when personalised)
    method: str  # the personalisation kept ("global": the global model won on the clinic's rows)
    note: str  # ``apply_personalisation``'s line: which model answers and why
    validation_log_loss: dict[str, float] = field(default_factory=dict)  # variant -> its personalised model's
    held_out: dict[str, float] = field(default_factory=dict)  # the served model on the clinic's test rows


def with_text_variants(names: Sequence[str]) -> list[str]:
    """``names`` and, after them, the built-in ``*_text`` variant of each that has one."""
    from models.spec import builtin_tasks

    builtin = set(builtin_tasks())
    return [*names, *(f"{n}{TEXT}" for n in names if f"{n}{TEXT}" in builtin and f"{n}{TEXT}" not in names)]


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _pair(reports: Mapping[str, dict], task: str) -> tuple[dict | None, dict | None]:
    return reports.get(task), reports.get(f"{task}{TEXT}")


def _bases(reports: Mapping[str, dict]) -> list[str]:
    """The tasks trained, by their name without text, in the order they were trained."""
    bases: list[str] = []
    for name in reports:
        base = name.removesuffix(TEXT)
        if base not in bases:
            bases.append(base)
    return bases


def _kind(report: dict) -> str:
    means = report["summary"]["means"]
    return "ordinal" if "kappa" in means else "multiclass" if "top3-accuracy" in means else "binary"


def summary_markdown(reports: Mapping[str, dict], served: Mapping[str, Mapping[str, Served]] | None = None) -> str:
    """The demo's results as the README quotes them: means over the clinics without → with the text,
    one line per trained task on its claims, and what each clinic serves.

    ``reports`` maps a task name to its run report (``demo-<task>.json``); ``served`` maps a clinic to
    its slots (``serve_at_clinics``).
    """
    dp = next(iter(reports.values()), {}).get("differential_privacy")
    lines = [(f"Each clinic trained with differential privacy, its own policy and noise: DP-SGD at ε {dp['epsilon']:g}, "
              f"δ {dp['delta']:g} per run." if dp else "Without differential privacy (`--dp-epsilon 0`)."),
             "Each cell: without → with the complaint text (the task's `*_text` variant).", "",
             "| task | metric | " + " | ".join(TITLES[m] for m in MODELS) + " |", "|---|---|" + "---:|" * len(MODELS)]
    sentences = []
    for base in _bases(reports):
        plain, text = _pair(reports, base)
        first = plain or text
        kind = _kind(first)
        for metric, only_for in SUMMARY_ROWS:
            if metric in first["summary"]["means"] and only_for in (None, kind):
                name = ("macro " if metric == "auroc" and kind != "binary" else "") + METRIC_NAMES[metric]
                cells = [" → ".join(_fmt(r["summary"]["means"][metric][m]) for r in (plain, text) if r) for m in MODELS]
                lines.append(f"| {base} | {name} | " + " | ".join(cells) + " |")
        sentences += [_claim_sentence(task, reports[task]) for task in (base, f"{base}{TEXT}") if task in reports]
    out = "\n".join(lines) + "\n\n" + "\n".join(sentences) + "\n"
    if served:
        out += "\n" + _served_markdown(served)
    return out


def _claim_sentence(task: str, report: dict) -> str:
    """Where the clinic's model does not beat its local-only one, and whether pooled does."""
    sites, summary = report["sites"], report["summary"]
    claim, auroc = summary["claims"]["auroc"], summary["means"]["auroc"]
    losers = claim["sites_not_beating_local"]
    detail = "; ".join(f"{name} {_fmt(sites[name]['personalised']['auroc'])} vs {_fmt(sites[name]['local_only']['auroc'])}"
                       f" (pooled {_fmt(sites[name]['pooled'].get('auroc'))})" for name in losers)
    return (f"- {task}: mean AUROC of the clinics' models {_fmt(auroc['personalised'])} vs pooled {_fmt(auroc['pooled'])}: "
            + ("within 0.02 of pooled" if claim["within_0.02_of_pooled"] else "more than 0.02 below pooled")
            + "; the clinic's model beats its local-only model (AUROC) at "
            f"{len(sites) - len(losers)} of {len(sites)} clinics" + (f"; not at {detail}" if losers else ""))


def _served_cell(s: Served, slot: str, *, metric: bool = True) -> str:
    variant = "with text" if s.task != slot else "without text"
    how = "global model" if s.method == "global" else s.method
    return f"{variant}, {how}" + (f": {_fmt(s.held_out.get('auroc'))}" if metric else "")


def _served_markdown(served: Mapping[str, Mapping[str, Served]]) -> str:
    slots = [slot for slot in TASKS if all(slot in clinic for clinic in served.values())]
    lines = [("What each clinic's scoring service serves: per slot, the variant whose model, personalised at the "
              "clinic, did best on the clinic's own validation rows; held-out AUROC of the served model."), "",
             "| clinic | " + " | ".join(slots) + " |", "|---|" + "---|" * len(slots)]
    for clinic, by_slot in served.items():
        lines.append(f"| {clinic} | " + " | ".join(_served_cell(by_slot[s], s) for s in slots) + " |")
    means = [mean_finite([by_slot[s].held_out.get("auroc", math.nan) for by_slot in served.values()]) for s in slots]
    texts = [sum(by_slot[s].task != s for by_slot in served.values()) for s in slots]
    lines.append("| mean (clinics serving text) | " + " | ".join(f"{_fmt(m)} ({n} of {len(served)})"
                                                              for m, n in zip(means, texts)) + " |")
    return "\n".join(lines) + "\n"


def per_clinic_tables(reports: Mapping[str, dict], served: Mapping[str, Mapping[str, Served]] | None) -> list[Table]:
    """Per task with a text variant, per clinic: the four models' AUROC without → with the text, and
    what the clinic serves in that slot."""
    tables = []
    for base in _bases(reports):
        plain, text = _pair(reports, base)
        if not (plain and text):
            continue
        metric = "AUROC" if _kind(plain) == "binary" else "macro AUROC"
        table = Table(Column("clinic", no_wrap=True), *(Column(MODEL_TITLES[m], no_wrap=True) for m in MODELS),
                      Column("serves", no_wrap=True), box=box.SIMPLE_HEAD,
                      title=f"{base} per clinic, held-out {metric}: without → with the complaint text")
        for clinic, site in plain["sites"].items():
            other = text["sites"].get(clinic, {})
            cells = [f"{_fmt(site[m].get('auroc'))}→{_fmt(other.get(m, {}).get('auroc'))}" for m in MODELS]
            where = (served or {}).get(clinic, {}).get(base)
            table.add_row(clinic, *cells, _served_cell(where, base, metric=False) if where else "–")
        tables.append(table)
    return tables


def serve_at_clinics(site_dirs: Sequence[Path], tracking_uri: str, trained: Sequence[str]) -> dict[str, dict[str, Served]]:
    """Each clinic's served models after the demo (the versions trained must be approved already).

    Empty unless every slot has a trained task (the workstation needs all three models).
    """
    variants = {slot: [t for t in (slot, f"{slot}{TEXT}") if t in trained] for slot in TASKS}
    if not all(variants.values()):
        return {}
    sites = [Path(p) for p in site_dirs]
    # Each clinic on its own (as each would on its own machine), two at a time: the personalisations
    # are small trainings bound by Python, not by threads within one process.
    with console.status("each clinic chooses, personalises and serves its models (fenji node use-model / serve / "
                        "personalise, on its own rows)"), ProcessPoolExecutor(
            max_workers=min(WORKERS, len(sites)), mp_context=get_context("spawn"), initializer=_one_thread) as pool:
        done = pool.map(_serve_at, sites, repeat(tracking_uri), repeat(variants))
        return {site.name: by_slot for site, by_slot in zip(sites, done)}


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _serve_at(site_dir: Path, tracking_uri: str, variants: Mapping[str, list[str]]) -> dict[str, Served]:
    from node_agent.budget import node_audit
    from node_agent.distribution import ModelDistribution, serve_task
    from node_agent.personalised import (
        apply_personalisation,
        personalise_site,
        personalised_info,
    )

    actor = "demo (as the clinic's admin)"
    losses: dict[str, dict[str, float]] = {slot: {} for slot in variants}
    last: dict[str, str] = {}
    for i in range(max(map(len, variants.values()))):  # each variant in turn: fetched, then personalised
        for slot, tasks in variants.items():
            serve_task(site_dir, tasks[min(i, len(tasks) - 1)])
        ModelDistribution(site_dir, tracking_uri).fetch()
        for slot, tasks in variants.items():
            if i < len(tasks):
                info = personalise_site(site_dir, slot)
                losses[slot][tasks[i]] = min(info.validation_log_loss.values(), default=math.inf)
                last[slot] = tasks[i]
    choice = {slot: min(tasks, key=lambda t: (losses[slot][t], t != slot)) for slot, tasks in variants.items()}
    for slot, task in choice.items():
        serve_task(site_dir, task)
    advisor = ModelDistribution(site_dir, tracking_uri).fetch()
    for slot, task in choice.items():
        info = personalise_site(site_dir, slot) if last[slot] != task else personalised_info(site_dir, slot)
        node_audit(site_dir).append(actor=actor, action="served-task", slot=slot, task=task,
                                    validation_log_loss=losses[slot])
        node_audit(site_dir).append(actor=actor, action="personalised", task=slot, method=info.method,
                                    base_version=info.base_version, bundle_sha256=info.bundle_sha256)
    answering, notes = apply_personalisation(site_dir, advisor)  # what `fenji node serve` serves here
    out = {}
    for slot, task in choice.items():
        ref, model = answering.models[slot], answering.tasks[slot]
        out[slot] = Served(task=task, version=ref.version, method=ref.method or "global", note=notes.get(slot, ""),
                           validation_log_loss=losses[slot], held_out=_held_out(site_dir, model))
    return out


def _held_out(site_dir: Path, model) -> dict[str, float]:
    """The served model's metrics on the clinic's test rows (read at the clinic, as its own report)."""
    from models.encoding import encode_labels
    from models.training import evaluate
    from node_agent.local import load_site_data

    test = load_site_data(site_dir, model.spec).test_frame
    return evaluate(model.model, model.spec, model.encoder.transform(test), encode_labels(model.spec, test),
                    model.calibration)


def served_json(served: Mapping[str, Mapping[str, Served]]) -> dict:
    return {clinic: {slot: asdict(s) for slot, s in by_slot.items()} for clinic, by_slot in served.items()}
