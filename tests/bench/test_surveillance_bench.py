"""``fenji bench surveillance`` on a tiny configuration: it writes what it promises, the wave it grows is
found, and its false alerts come from seeds without one (no timing assertions)."""

import json

import numpy as np
from typer.testing import CliRunner

from bench import surveillance
from fenji.cli import app
from models.syndromes import syndrome_codes
from simulation.outbreak import Outbreak


def test_the_series_hold_the_wave_in_its_district_only():
    wave = Outbreak(start_day=60, visits=40)
    calm = surveillance.series(0, days=84, outbreak=None)
    waved = surveillance.series(0, days=84, outbreak=wave)
    febrile = [syndrome_codes().index(s) for s in surveillance.SIGNAL]
    extra = {d: waved[d][:, febrile].sum() - calm[d][:, febrile].sum() for d in calm}
    assert extra["outer_suburbs"] > 40 and extra["inner_city"] == 0
    days = np.flatnonzero((waved["outer_suburbs"] - calm["outer_suburbs"]).sum(axis=1))
    assert days.min() >= 60 and days.max() < 60 + wave.days


def test_bench_surveillance_runs_tiny(tmp_path, monkeypatch):
    calls = []
    real = surveillance.run
    monkeypatch.setattr(surveillance, "run", lambda seeds: calls.append(seeds) or real(seeds=seeds, days=84,
                                                                                      sizes=(40,)))
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    result = CliRunner().invoke(app, ["bench", "surveillance", "--seeds", "1", "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert calls == [1]
    report = json.loads(out.read_text())
    for way in ("with_text", "complaint_only"):
        for interval in ("day", "week"):
            for method in ("C1", "C2", "C3"):
                figures = report["results"][way][interval][method]
                assert 0 <= figures["sensitivity"]["40"] <= 1 and figures["false_alerts_per_series_year"] >= 0
    assert report["results"]["with_text"]["day"]["C2"]["sensitivity"]["40"] == 1.0
    assert "false alerts" in result.output and png.read_bytes()[:4] == b"\x89PNG"
