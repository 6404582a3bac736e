from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import models.errors
import models.spec
from models.encoding import Encoder, SiteStatistics
from models.errors import TaskSpecError
from models.spec import builtin_tasks, load_task


def test_public_api_is_listed():
    for module in (models.spec, models.errors):
        for name in module.__all__:
            assert hasattr(module, name), name


def test_builtin_tasks_load():
    assert {"referral_risk", "heart_disease"} <= set(builtin_tasks())
    spec = load_task("heart_disease")
    assert spec.label.kind == "binary" and "cp" in spec.feature_names


def test_user_task_yaml_works_without_code(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: my_task\nfeatures:\n  - {name: x, kind: numeric, min: 0, max: 5}\n"
        "  - {name: c, kind: categorical, values: [a, b]}\nlabel: {name: y, kind: binary, classes: [no, yes]}\n"
    )
    spec = load_task(path)
    assert spec.name == "my_task" and Encoder(spec).columns == ["x", "x:missing", "c=a", "c=b", "c:missing"]


@pytest.mark.parametrize("text, match", [
    ("name: t\nfeatures: []\nlabel: {name: y, kind: binary, classes: [0, 1]}\n", "at least one feature"),
    ("name: t\nfeatures:\n  - {name: c, kind: categorical}\nlabel: {name: y, kind: binary, classes: [0, 1]}\n",
     "allowed 'values'"),
    ("name: t\nfeatures:\n  - {name: x, kind: numeric}\nlabel: {name: y, kind: binary, classes: [0, 1, 2]}\n",
     "exactly two"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_invalid_task_specs_are_clear_errors(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TaskSpecError, match=match):
        load_task(path)


def test_unknown_task_name():
    with pytest.raises(TaskSpecError, match="built-in tasks are"):
        load_task("nope")


def test_never_recorded_feature_is_missing_not_a_plausible_value(referral_spec):
    frame = pd.DataFrame({"age": [50.0, 70.0], "sex": ["F", "M"], "complaint": ["fever", "other"],
                          "heart_rate": [80.0, None], "referred_up": ["0", "1"]})  # no spo2 column at all
    stats = SiteStatistics.from_frame(referral_spec, frame)
    params = stats.encoding_params()
    params.means["spo2"], params.stds["spo2"] = 97.0, 2.0
    encoder = Encoder(referral_spec, params)
    x = encoder.transform(frame)
    cols = encoder.columns
    assert np.all(x[:, cols.index("spo2")] == 0.0)          # standardised mean, never e.g. 97
    assert np.all(x[:, cols.index("spo2:missing")] == 1.0)
    assert x[1, cols.index("heart_rate:missing")] == 1.0 and x[0, cols.index("heart_rate:missing")] == 0.0
    assert np.isfinite(x).all()


def test_sufficient_statistics_give_mean_and_sd(referral_spec):
    rng = np.random.default_rng(0)
    ages = rng.normal(50, 10, 500)
    frame = pd.DataFrame({"age": ages, "referred_up": ["0"] * 400 + ["1"] * 100})
    halves = [SiteStatistics.from_frame(referral_spec, frame.iloc[:200]), SiteStatistics.from_frame(referral_spec, frame.iloc[200:])]
    total = SiteStatistics(referral_spec, halves[0].vector + halves[1].vector).encoding_params()
    assert total.means["age"] == pytest.approx(ages.mean())
    assert total.stds["age"] == pytest.approx(ages.std(ddof=1))
    assert total.class_counts == [400.0, 100.0] and total.n_rows == 500


def test_boolean_with_missing_values_encodes(referral_spec):
    frame = pd.DataFrame({"age": [50.0, 60.0, 70.0], "sex": ["F", "M", "F"], "complaint": ["fever"] * 3,
                          "hx_copd": pd.array([True, None, False], dtype="boolean"), "referred_up": ["0", "1", "0"]})
    encoder = Encoder(referral_spec)
    x = encoder.transform(frame)
    assert list(x[:, encoder.columns.index("hx_copd")]) == [1.0, 0.0, 0.0]
    assert list(x[:, encoder.columns.index("hx_copd:missing")]) == [0.0, 1.0, 0.0]
