"""The shipped default bundle: it loads, validates (manifest, hashes, graph IO) and finds the obvious."""

import json
from pathlib import Path

import pytest

from models.bundle import load_manifest
from service.core import Engine

DEFAULT = Path(__file__).resolve().parents[2] / "service" / "bundles" / "default"


@pytest.fixture(scope="module")
def engine():
    return Engine.load(DEFAULT)


def test_manifest_validates_and_hashes_match():
    m = load_manifest(DEFAULT)  # schema, format version, every file present, SHA-256 equal
    assert {"ner", "similarity"} <= set(m.tasks)
    assert "name" in m.tasks["ner"].labels and "address" in m.tasks["ner"].labels  # CLUENER's 10 types
    assert m.tasks["ner"].pick("cpu").precision == "int8"
    for task, data in (("ner", "cluener/train.json"), ("similarity", "stsb_zh/train.tsv")):
        q = m.tasks[task].graphs["int8"].quantization  # static since the requantization (issue 16)
        assert q.mode == "static" and q.batch_invariant and q.batch_dependence <= 1e-4
        assert data in q.calibration.source and (q.calibration.texts, q.calibration.seed) == (256, 0)
        assert q.matmuls_int8 == 24  # 4 layers x 6 encoder MatMuls
    assert not m.tasks["similarity"].whitening  # measured to cost 3.5-5.9 points of the mean dev Spearman
    assert {d.name for d in m.provenance.training_data}  # data and terms are recorded
    assert all(d.terms for d in m.provenance.training_data)
    size = sum(f.stat().st_size for f in DEFAULT.iterdir())
    assert size < 30 * 2**20  # the size budget of a bundle shipped in the repository


@pytest.mark.parametrize("text, expected", [
    ("张伟在北京大学读书，他的父亲在中国人民银行工作。", {("张伟", "name")}),
    ("国务院总理李克强今天在人民大会堂会见了美国总统。", {("李克强", "name")}),
    ("《三体》是刘慈欣创作的长篇科幻小说。", {("《三体》", "book"), ("刘慈欣", "name")}),
    ("周杰伦在台北举办了演唱会。", {("周杰伦", "name"), ("台北", "address")}),
    ("我明天要去上海市浦东新区参加发布会。", {("上海市浦东新区", "address")}),
])
def test_finds_the_obvious_entities(engine, text, expected):
    (entities,) = engine.run("ner", texts=[text]).entities
    found = {(e.text, e.label) for e in entities}
    assert expected <= found
    for e in entities:  # offsets point into the text
        assert text[e.start:e.end] == e.text


@pytest.mark.parametrize("text, org", [
    ("张伟在北京大学读书，他的父亲在银行工作。", "北京大学"),
    ("他在阿里巴巴集团工作了五年。", "阿里巴巴集团"),
])
def test_finds_an_organisation(engine, text, org):
    (entities,) = engine.run("ner", texts=[text]).entities
    assert any(e.text == org and e.label in {"company", "organization", "government"} for e in entities)


def test_similarity_ranks_the_paraphrase_first(engine):
    ranked = engine.run("similarity", query="今天天气怎么样", candidates=["我想去北京大学", "明天会下雨吗", "今天的天气如何"])
    assert ranked.results[0].text == "今天的天气如何"
    assert ranked.results[-1].text == "我想去北京大学"
    close, far = engine.run("similarity", pairs=[("我想买一部手机", "我要买个新手机"), ("我想买一部手机", "今天天气很好")]).scores
    # not whitened (CoSENT orders pairs, it does not spread cosines): unrelated texts still sit near 0.59
    assert close > far + 0.1


MEDICAL = DEFAULT.parent / "medical"


@pytest.fixture(scope="module")
def medical():
    return Engine.load(MEDICAL)


def test_medical_bundle_validates_and_fits_the_budget_with_the_default():
    m = load_manifest(MEDICAL)  # schema, format version, every file present, SHA-256 equal
    assert "similarity" not in m.tasks and m.tasks["ner"].pick("cpu").precision == "int8"
    q = m.tasks["ner"].graphs["int8"].quantization
    assert q.mode == "static" and q.batch_invariant and q.calibration.source.endswith("cmeee/train.jsonl")
    assert {"dis", "sym", "dru", "bod", "pro"} <= set(m.tasks["ner"].labels)  # CMeEE's 9 types
    assert m.tasks["ner"].decode == "nested"  # nested spans are the point of this model
    assert all(d.terms for d in m.provenance.training_data)
    total = sum(f.stat().st_size for d in (DEFAULT, MEDICAL) for f in d.iterdir())
    assert total < 50 * 2**20  # both shipped bundles together (issue 14: <= 60 MB, the 10.6 MB encoder beside them)


@pytest.mark.parametrize("text, expected", [
    ("患者出现发热、咳嗽等症状，诊断为肺炎，给予阿莫西林治疗。",
     {("发热", "sym"), ("咳嗽", "sym"), ("肺炎", "dis"), ("阿莫西林", "dru")}),
    ("糖尿病患者应定期检查血糖。", {("糖尿病", "dis")}),
    ("幽门螺杆菌感染是胃溃疡的主要病因。", {("胃溃疡", "dis")}),
])
def test_medical_finds_the_obvious_entities(medical, text, expected):
    (entities,) = medical.run("ner", texts=[text]).entities
    assert expected <= {(e.text, e.label) for e in entities}
    assert all(text[e.start:e.end] == e.text for e in entities)


def test_evaluate_a_shipped_bundle_by_name(tmp_path):
    from ropenlp.evaluate import evaluate_ner  # `ropenlp evaluate ner --bundle medical`

    text = "患者出现发热、咳嗽等症状，诊断为肺炎，给予阿莫西林治疗。"
    gold = [("发热", "sym"), ("咳嗽", "sym"), ("肺炎", "dis"), ("阿莫西林", "dru")]
    entities = [{"start_idx": text.index(s), "end_idx": text.index(s) + len(s) - 1, "type": t, "entity": s}
                for s, t in gold]
    data = tmp_path / "dev.jsonl"
    data.write_text(json.dumps({"text": text, "entities": entities}, ensure_ascii=False) + "\n", encoding="utf-8")
    metrics = evaluate_ner([str(data)], bundle="medical")
    assert metrics["bundle"] == "medical" and metrics["graph_precision"] == "int8"
    assert metrics["gold"] == 4 and metrics["recall"] == 1.0  # the four found by the test above


@pytest.mark.parametrize("name", ["default", "medical"])
def test_shipped_bundles_have_their_model_card(name):
    """The cards are generated from the (format 3, requantized) manifests and kept in sync with them."""
    from models.card import CARD, model_card

    bundle = DEFAULT.parent / name
    m = load_manifest(bundle)
    assert m.format_version == 3 and CARD not in m.files  # the card is not hashed: adding it changed nothing
    assert (bundle / CARD).read_text(encoding="utf-8") == model_card(m)
    assert "## Data and terms" in model_card(m) and "## Limits" in model_card(m)


# --------------------------------------------------------------------------------------------
# Batch invariance (issue 16): a text's answer does not depend on the batch it rides in
# --------------------------------------------------------------------------------------------


def test_default_bundle_results_do_not_depend_on_the_batch(engine):
    """The issue's case: "李明是上海市第一人民医院的医生。" lost its organization in a batch of four with dynamic int8."""
    from tests.service.invariance import BOUND, TEXTS, engine_batch_dependence

    (alone,) = engine.run("ner", texts=[TEXTS[1]]).entities
    in_batch = engine.run("ner", texts=TEXTS[:4]).entities[1]
    spans = {(e.start, e.end, e.label) for e in alone}
    assert ("李明", "name") in {(e.text, e.label) for e in alone} and spans == {(e.start, e.end, e.label) for e in in_batch}
    worst = engine_batch_dependence(engine)
    assert set(worst) == {"ner", "embed"} and max(worst.values()) <= BOUND, worst


def test_medical_bundle_results_do_not_depend_on_the_batch(medical):
    from tests.service.invariance import BOUND, engine_batch_dependence

    worst = engine_batch_dependence(medical)
    assert list(worst) == ["ner"] and worst["ner"] <= BOUND, worst


def test_http_probe_on_the_default_bundle():
    """``ropenlp serve``'s defaults on the shipped bundle: /ner and /embed one by one, batched and concurrent."""
    from tests.service.conftest import running, settings
    from tests.service.invariance import BOUND, http_batch_dependence

    with running(settings(bundle=DEFAULT, provider="cpu")) as base:
        worst = http_batch_dependence(base)
    assert max(worst.values()) <= BOUND, worst
