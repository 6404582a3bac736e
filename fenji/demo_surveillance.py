"""``fenji demo``'s surveillance step: the clinics count syndromes per day, each district's counts are
decrypted as one sum, EARS runs on every series, and the top alerts are printed.

Each clinic's admin allows surveillance in its district (``fenji node surveillance``; the synthetic
clinics' districts come from the generator). The query covers the synthetic visits' half year and
counts a task with the complaint text if the demo trained one (the text finds fever with cough), else
the coded complaint. The generator's influenza-like wave at two neighbouring clinics should head the list.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from rich.table import Table

from coordinator.settings import CoordinatorSettings
from fenji.run_report import console
from models.errors import FenjiError

__all__ = ["show_surveillance"]

TOP = 5  # alerts printed


def _task(specs: list) -> object | None:
    """The demo's task to count: one with the complaint text if any, else one with the coded complaint."""
    counted = [s for s in specs if "complaint" in s.feature_names or "complaint_text" in s.feature_names]
    with_text = [s for s in counted if "complaint_text" in s.feature_names]
    return (with_text or counted or [None])[0]


def show_surveillance(site_dirs: list[Path], specs: list, settings: CoordinatorSettings, *, encrypt: bool = True,
                      verbose: bool = False) -> dict | None:
    """Run the demo's surveillance query, print the districts and the top alerts; return the report."""
    from coordinator.surveillance.report import surveillance_report
    from federation.surveillance import SyndromeCounts
    from keyholder.settings import load_keyholder_settings
    from simulation.outbreak import DEFAULT_OUTBREAK, SERIES_DAYS, SERIES_START
    from simulation.surveillance import (
        allow_surveillance_at_sites,
        districts_of,
        run_simulated_surveillance,
    )

    spec = _task(specs)
    if spec is None:
        return None
    console.rule(f"[bold]Syndromic surveillance ({spec.name}): daily syndrome counts per district, EARS C1/C2/C3")
    allow_surveillance_at_sites(site_dirs, spec, districts_of(site_dirs), approve=False)
    query = SyndromeCounts(start=SERIES_START, end=SERIES_START + timedelta(days=SERIES_DAYS - 1))
    keyholder = load_keyholder_settings(home=settings.home)
    try:
        with console.status("the clinics count their visits per syndrome and day; one encrypted sum per district…"):
            result = run_simulated_surveillance(query, site_dirs, task=spec, keyholder_home=keyholder.state_dir,
                                                encrypt=encrypt, verbose=verbose, audit_log=settings.audit_path)
    except FenjiError as exc:  # the models are trained and registered by now: say why, and go on
        console.print(f"[yellow]No surveillance: {exc}[/]", soft_wrap=True)
        return None
    report = surveillance_report(result)
    for district, sites in report["districts"].items():
        console.print(f"{district}: one sum over {len(sites)} clinics ({', '.join(sites)})", soft_wrap=True)
    for district, reason in report["unavailable"].items():
        console.print(f"{district}: no sum ({reason})", soft_wrap=True)
    method, titles = report["method"], report["syndrome_titles"]
    alerts = sorted((a for a in report["alerts"] if a["method"] == method and a["interval"] == "day"),
                    key=lambda a: -(a["severity"] if a["severity"] is not None else float("inf")))
    wave = SERIES_START + timedelta(days=DEFAULT_OUTBREAK.start_day)
    table = Table("#", "district", "syndrome", "day", "visits", "threshold", "over (SD)",
                  title=f"Top alerts ({method}, last {report['detector']['window']['day']} days, worst first); "
                        f"the synthetic wave at {' and '.join(DEFAULT_OUTBREAK.clinics)} starts {wave.isoformat()}")
    for i, alert in enumerate(alerts[:TOP], start=1):
        title = titles.get(alert["syndrome"], {})
        table.add_row(str(i), alert["unit"], f"{title.get('zh', '')} {title.get('en', alert['syndrome'])}",
                      alert["period"], f"{alert['observed']:g}", f"{alert['upperbound']:.1f}",
                      f"{alert['severity']:.1f}" if alert["severity"] is not None else "flat baseline")
    console.print(table if alerts else "No alert in the last days of the series.")
    console.print("In the console: FENJI_SITES_DIR=… fenji coordinator serve, then the Surveillance view "
                  "(a commissioner runs it; the alerts and each series with its alarms).", soft_wrap=True)
    return report
