"""The free-text feature kind: hashing without a vocabulary, in Chinese and English, robust to
typos, the same in every process; nothing a node sends holds a word of any text; explanations
name the words of the record's own text."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from models.encoding import Encoder, SiteStatistics, encode_labels
from models.errors import TaskSpecError
from models.explain import explain_text, text_word_contributions
from models.nets import build_model, get_flat
from models.spec import FeatureKind, TaskSpec, load_task
from models.text import TextHasher, normalise, terms
from models.training import TrainConfig, train


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_normalisation_folds_width_case_and_punctuation():
    assert normalise("ＣＨＥＳＴ　Pain！！ ３天，加重。") == "chest pain 3天 加重"
    assert normalise(None) == normalise(float("nan")) == normalise(" ，。! ") == ""


def test_chinese_gives_character_ngrams_and_english_word_ngrams():
    zh = {t.key for t in terms("胸痛三天")}
    assert {"c:胸", "c:胸痛", "c:胸痛三", "c:痛三天"} <= zh
    assert "c:胸痛三天" not in zh  # at most 3 characters
    en = {t.key for t in terms("Chest pain, sweating")}
    assert {"w:chest", "w:pain", "w:chest pain", "w:pain sweating", "c:<ch", "c:st>"} <= en


def test_rows_are_unit_length_signed_and_empty_text_is_zero():
    x = TextHasher(64).transform(["胸痛3天", "chest pain", "", None])
    assert np.allclose(np.linalg.norm(x[:2], axis=1), 1.0)
    assert (x < 0).any() and (x > 0).any()  # signed hashing
    assert not x[2:].any()


@pytest.mark.parametrize(("right", "typo", "other"), [
    ("咳嗽伴发热3天", "咳簌伴发热３天", "腹痛腹泻1天"),
    ("chest pain for 2 hours", "chset pain for 2 hours", "abdominal pain for 3 days"),
])
def test_a_typo_stays_closer_to_the_right_text_than_another_complaint(right, typo, other):
    x = TextHasher().transform([right, typo, other])
    assert _cos(x[0], x[1]) > 0.5 > _cos(x[0], x[2])


def test_hashing_is_the_same_in_another_process():
    texts = ["胸口痛2小时，伴大汗", "short of breath, wheezing", "患儿发烧 咽痛"]
    here = TextHasher(256, "fenji-text-v1").transform(texts)
    code = ("import json,sys; from models.text import TextHasher; "
            f"print(json.dumps(TextHasher(256, 'fenji-text-v1').transform({texts!r}).tolist()))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=str(_repo()))
    assert np.array_equal(here, np.asarray(json.loads(other.stdout), dtype=np.float32))
    assert not np.array_equal(here, TextHasher(256, "another-key").transform(texts))


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def test_text_spec_checks_its_settings():
    spec = load_task("triage_text")
    text = spec.feature("complaint_text")
    assert text.kind is FeatureKind.TEXT and text.buckets == 256 and text.hash_key
    base = spec.model_dump(mode="json")
    bad = {**base, "features": [*base["features"][:-1], {**base["features"][-1], "values": ["a"]}]}
    with pytest.raises(ValueError, match="takes no 'values'"):
        TaskSpec.model_validate(bad)
    numeric = {**base, "features": [{"name": "age", "kind": "numeric", "buckets": 64}]}
    with pytest.raises(ValueError, match="only text features"):
        TaskSpec.model_validate(numeric)
    assert "buckets" not in load_task("triage").model_dump()["features"][0]  # old specs dump as before
    with pytest.raises(TaskSpecError):
        load_task(_repo() / "no-such-task.yaml")


def _frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    texts = ["胸口压榨样痛2小时伴大汗", "chest pain, sweating", "咳嗽3天", "cough for 3 days", "腰痛1周", None, ""]
    rows = []
    for i in range(n):
        t = texts[i % len(texts)]
        rows.append({"encounter_id": f"e{i}", "age": float(rng.integers(20, 90)), "sex": "MF"[i % 2],
                     "complaint": "chest_pain" if i % len(texts) < 2 else "other", "complaint_text": t,
                     "referred_up": str(int(i % len(texts) < 2))})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def text_spec() -> TaskSpec:
    base = load_task("referral_risk_text").model_dump(mode="json")
    keep = {"age", "sex", "complaint", "complaint_text"}
    return TaskSpec.model_validate({**base, "features": [f for f in base["features"] if f["name"] in keep]})


def test_encoder_places_text_next_to_structured_features(text_spec):
    frame = _frame()
    encoder = Encoder(text_spec, SiteStatistics.from_frame(text_spec, frame).encoding_params())
    x = encoder.transform(frame)
    cols = encoder.text_columns("complaint_text")
    assert x.shape == (len(frame), encoder.width) and len(cols) == 256
    assert encoder.columns[cols[0]] == "complaint_text#0" and encoder.columns[cols[-1] + 1] == "complaint_text:missing"
    missing = x[:, cols[-1] + 1]
    assert np.array_equal(missing == 1, frame["complaint_text"].fillna("").eq("").to_numpy())
    assert encoder.feature_slices()["complaint_text"] == [*cols, cols[-1] + 1]


def _all_ngrams(texts) -> set[str]:
    grams = set()
    for text in texts:
        for term in terms(text):
            grams.add(term.shown)
            grams.add(term.key[2:])
    return {g for g in grams if len(g) >= 2 or not g.isascii()}


def _sent(spec: TaskSpec, frame: pd.DataFrame) -> str:
    """What a site's node sends about ``frame``, and the layout both sides agree on, as JSON text."""
    from node_agent.local import SiteData, site_statistics, train_update

    data = SiteData("site_x", spec, frame, frame.iloc[:10])
    stats = site_statistics(data)
    params = stats.encoding_params()
    flat, n, _ = train_update(data, params, get_flat(build_model(spec, Encoder(spec).width)), TrainConfig(epochs=1))
    assert stats.vector.dtype == np.float64 and flat.dtype.kind == "f" and n == len(frame)
    return json.dumps({"statistics": stats.vector.tolist(), "params": params.to_dict(),
                       "columns": Encoder(spec, params).columns, "update": flat.tolist()}, ensure_ascii=False)


def _strings(sent: str) -> set[str]:
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                found.add(k)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(json.loads(sent))
    return found


def test_nothing_a_site_sends_holds_a_word_of_its_texts(text_spec):
    """Statistics, encoding parameters, layout and model update: numbers, and names that are the
    same whatever the texts (the spec's column names), never a word or character of a text."""
    frame = _frame()
    other = frame.assign(complaint_text=frame["complaint_text"].map(
        {"胸口压榨样痛2小时伴大汗": "心悸", "chest pain, sweating": "wheezing", "咳嗽3天": "头晕"}))
    sent = _sent(text_spec, frame)
    assert _strings(sent) == _strings(_sent(text_spec, other))  # the texts change numbers only
    assert not any("\u3400" <= ch <= "\u9fff" for ch in sent)  # not one Chinese character
    words = {t.shown for text in frame["complaint_text"] for t in terms(text)}
    assert {"chest pain", "sweating", "胸口"} <= words  # the check below can fail
    assert not words & _strings(sent)


def test_explanation_names_the_words_of_this_record(text_spec):
    frame = _frame(140)
    encoder = Encoder(text_spec, SiteStatistics.from_frame(text_spec, frame).encoding_params())
    x, y = encoder.transform(frame), encode_labels(text_spec, frame)
    model = build_model(text_spec, encoder.width)
    train(model, text_spec, x, y, TrainConfig(epochs=60, learning_rate=0.1, seed=0))

    def score(rows: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = model(torch.as_tensor(rows, dtype=torch.float32))
        return out[:, 0].numpy()  # a binary model's one output: the log-odds

    record = {"age": 60.0, "sex": "M", "complaint": "other", "complaint_text": "胸口压榨样痛，大汗"}
    words = explain_text(score, encoder, record)["complaint_text"]
    shown = [w for w, _ in words]
    assert shown and all(w in normalise(record["complaint_text"]) for w in shown)
    assert words[0][1] > 0 and any(w in "胸口压榨样痛" and len(w) >= 2 for w in shown)
    english = explain_text(score, encoder, {**record, "complaint_text": "Chest pain and sweating"})["complaint_text"]
    assert {"chest pain", "sweating"} & {w for w, _ in english}
    assert explain_text(score, encoder, {**record, "complaint_text": None})["complaint_text"] == []
    # A logistic model's word contributions are exact: one word, its whole effect.
    single = {**record, "complaint_text": "sweating"}
    x1 = encoder.transform(pd.DataFrame([single]))[0]
    cols = encoder.text_columns("complaint_text")
    weights = encoder.hashers["complaint_text"].weights(single["complaint_text"])
    [(word, contribution)] = text_word_contributions(score, x1, cols, weights)
    empty = x1.copy()
    empty[cols] = 0
    assert word == "sweating"
    assert contribution == pytest.approx(float(score(x1[None])[0] - score(empty[None])[0]), abs=1e-4)


def test_the_serving_encoder_hashes_text_exactly_as_training_does():
    """The scoring service's record encoder (``models.advisor``) gives ``Encoder.transform``'s matrix
    for a task with free text, so a ``*_text`` model scores at the clinic as it was trained."""
    import numpy as np
    import pandas as pd

    from models.advisor import encode_records
    from models.encoding import Encoder, SiteStatistics
    from models.spec import load_task

    spec = load_task("referral_risk_text")
    rng = np.random.default_rng(5)
    texts = ["发热三天，咳嗽咳痰", "chest pain since morning", "", None, "！！", "腹泻 fever 2 days", "头晕头痛"]
    rows = []
    for i in range(28):
        row = {f.name: None for f in spec.features}
        for f in spec.features:
            if f.kind.value == "numeric":
                row[f.name] = float(rng.normal(50, 10)) if i % 5 else None
            elif f.kind.value == "categorical":
                row[f.name] = (f.values or [None])[i % len(f.values or [None])]
            elif f.kind.value == "boolean":
                row[f.name] = bool(i % 2) if i % 7 else None
            elif f.kind.value == "text":
                row[f.name] = texts[i % len(texts)]
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame[spec.label.name] = spec.label.classes[0]
    encoder = Encoder(spec, SiteStatistics.from_frame(spec, frame).encoding_params())
    np.testing.assert_allclose(encode_records(encoder, rows), encoder.transform(frame), atol=1e-6)
