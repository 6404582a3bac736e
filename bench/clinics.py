"""The clinics every site-count benchmark runs on: ``n`` synthetic community clinics (``simulation.synth``,
``rows`` encounters each, non-identical: age and label offset vary by site), each ingested for the
referral-risk task into its own site store, and that task with a ~100k-parameter MLP in place of its
small model, so that the update's size, not the clinic's training, is what the benchmarks compare.
``bench.scale`` (Fenji's modes on Flower's engine) and ``bench.secagg`` (Flower's SecAgg+) use the same
ones, so their columns line up."""

from __future__ import annotations

from pathlib import Path

__all__ = ["HIDDEN", "clinical_spec", "prepare_sites"]

HIDDEN = [256, 256, 88]  # with the referral task's 40 inputs: about 100k parameters


def clinical_spec(hidden: list[int] | None = HIDDEN, *, local_epochs: int = 1):
    """The referral-risk task spec, its model an MLP of ``hidden`` layers (``None``: the task's own model)."""
    from models.spec import load_task

    base = load_task("referral_risk")
    update = {"local_epochs": local_epochs} if hidden is None else {"family": "mlp", "hidden": hidden,
                                                                     "local_epochs": local_epochs}
    return base.model_copy(update={"model": base.model.model_copy(update=update)})


def prepare_sites(root: Path, sites: int, rows: int, *, spec=None, seed: int = 1) -> list[Path]:
    """``sites`` clinics of ``rows`` encounters under ``root / "sites"`` (exports under ``root / "exports"``),
    ingested for ``spec`` (default ``clinical_spec()``). Returns the site folders, in order."""
    from node_agent.ingest import ingest_file
    from node_agent.mapping import load_mapping
    from node_agent.store import SiteStore
    from simulation.synth import ClinicProfile, write_federation

    spec = spec or clinical_spec()
    clinics = [ClinicProfile(f"site_{i:03d}", rows, age_mean=40 + (i * 7) % 35, label_offset=((i % 5) - 2) / 5)
               for i in range(sites)]
    site_dirs = []
    for name, path, mapping in write_federation(root / "exports", clinics=clinics, seed=seed, bad_rows=False):
        with SiteStore(root / "sites" / name) as store:
            ingest_file(store, spec, path, load_mapping(mapping))
        site_dirs.append(root / "sites" / name)
    return site_dirs
