"""``fenji bench text-gain``: each task with and without the complaint text, on the same rows."""

from __future__ import annotations

import json

from bench import text_gain
from bench.common import write_json
from fenji.cli_bench import BENCHMARKS


def test_text_gain_compares_the_same_rows_with_and_without_text(tmp_path):
    report = text_gain.run(tasks=("diagnosis",), rounds=1, epochs=3)
    assert "text-gain" in BENCHMARKS
    result = report["results"]["diagnosis"]
    for mode in ("pooled", "federated"):
        r = result[mode]
        assert (r["without"]["task"], r["with"]["task"]) == ("diagnosis", "diagnosis_text")
        assert set(r["gain"]) == {"auroc", "top3-accuracy"}
        assert r["gain"]["auroc"] == r["with"]["means"]["auroc"] - r["without"]["means"]["auroc"]
        assert set(r["with"]["per_clinic"]) == set(report["inputs"]["clinics"])
    # What the text says about the diagnosis group behind a vague complaint shows even after 3 epochs.
    assert result["pooled"]["gain"]["auroc"] > 0.02
    write_json(tmp_path / "t.json", report)
    text_gain.plot(report, tmp_path / "t.png")
    assert json.loads((tmp_path / "t.json").read_text())["benchmark"] == "text-gain"
    assert (tmp_path / "t.png").stat().st_size > 1000
