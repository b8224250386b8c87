"""Core without HTTP: batching plans, validation, windows merged, the synchronous API."""

from __future__ import annotations

import numpy as np
import pytest

from models.spans import decode_spans, non_overlapping
from models.batches import plan_batches, select_batch
from service.core import Engine, Limits, Seq
from service.errors import (
    EmptyInput,
    InferenceError,
    InvalidRequest,
    OutOfRange,
    TaskUnavailable,
    TextTooLong,
    TooManyEntities,
    TooManyItems,
)
from service.tasks.ner import EntityBudget, Row
from tests.service.fakes import fake_engine


def test_plan_batches_respects_budget_and_sorts_by_length() -> None:
    lengths = [5, 60, 7, 33, 64, 2, 64, 10]
    batches = plan_batches(lengths, 128)
    assert sorted(k for b in batches for k in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[k] for k in b) * len(b) <= 128
        assert [lengths[k] for k in b] == sorted((lengths[k] for k in b), reverse=True)
    assert plan_batches([500, 3], 128) == [[0], [1]]  # too long for the budget: runs alone


def test_select_batch_keeps_the_oldest_and_fits() -> None:
    lengths = [40, 3, 100, 5, 41, 39]
    chosen = select_batch(lengths, 0, 120)
    assert 0 in chosen and max(lengths[k] for k in chosen) * len(chosen) <= 120
    assert select_batch(lengths, 2, 120) == [2]  # its neighbours would overflow the budget
    assert sorted(select_batch(lengths, 1, 10_000)) == list(range(len(lengths)))


def test_execute_bounds_padding_and_keeps_the_order_of_answers(engine) -> None:
    """Rows of very different lengths go into separate batches (padding within MAX_PADDING of each batch's
    cost), and every answer comes back in its input's place: equal to the text run alone."""
    import numpy as np

    from models.batches import MAX_PADDING, padding_fraction

    texts = ["我", "我爱北京天安门" * 4, "上海", "中国人民银行" * 3, "张三李四", "我爱北京天安门" * 4 + "上海的人"]
    ran: list[list[int]] = []
    run_batch = engine.run_batch

    def spy(task, seqs):
        ran.append([len(s) for s in seqs])
        return run_batch(task, seqs)

    engine.run_batch = spy
    try:
        together = engine.run("embed", texts=texts).vectors
    finally:
        del engine.run_batch
    assert len(ran) > 1 and all(padding_fraction(b) <= MAX_PADDING for b in ran)
    for text, vector in zip(texts, together, strict=True):
        assert np.abs(engine.run("embed", texts=[text]).vectors[0] - vector).max() <= 1e-5


def test_validation_errors(tiny_bundle) -> None:
    engine, _ = fake_engine(tiny_bundle, limits=Limits(max_items=3, max_chars=20))
    cases = [
        (lambda: engine.run("ner", texts=[]), EmptyInput, "texts"),
        (lambda: engine.run("ner", texts=["a"] * 4), TooManyItems, "texts"),
        (lambda: engine.run("ner", texts="abc"), InvalidRequest, "texts"),
        (lambda: engine.run("ner", texts=["a", None]), InvalidRequest, "texts[1]"),
        (lambda: engine.run("ner", texts=["a" * 21]), TextTooLong, "texts[0]"),
        (lambda: engine.run("ner", texts=["\ud800"]), InvalidRequest, "texts[0]"),
        (lambda: engine.run("ner", texts=["a"], threshold=11.0), OutOfRange, "threshold"),
        (lambda: engine.run("ner", texts=["a"], threshold=float("nan")), OutOfRange, "threshold"),
        (lambda: engine.run("ner", texts=["a"], threshold="1"), InvalidRequest, "threshold"),
        (lambda: engine.run("ner", texts=["a"], decode="bogus"), InvalidRequest, "decode"),
        (lambda: engine.run("ner", texts=["a"], decode=1), InvalidRequest, "decode"),
        (lambda: engine.run("similarity", pairs=[["a", "b", "c"]]), InvalidRequest, "pairs[0]"),
        (lambda: engine.run("similarity", pairs=[["a", 3]]), InvalidRequest, "pairs[0][1]"),
        (lambda: engine.run("similarity", query="q", candidates=["a"], top_k=0), OutOfRange, "top_k"),
        (lambda: engine.run("similarity", query="q", candidates=["a"], top_k=True), InvalidRequest, "top_k"),
        (lambda: engine.run("embed", texts=[]), EmptyInput, "texts"),
    ]
    for call, cls, field in cases:
        with pytest.raises(cls) as e:
            call()
        assert e.value.field == field, (cls, e.value)
    with pytest.raises(TooManyItems) as e:
        engine.run("embed", texts=["a"] * 4)
    assert e.value.limit == 3


def test_task_unavailable(tiny_bundle) -> None:
    engine, _ = fake_engine(tiny_bundle, similarity_only=True)
    with pytest.raises(TaskUnavailable):
        engine.run("ner", texts=["北京"])


def test_long_text_windows_are_merged(tiny_bundle) -> None:
    """An entity cut by one window is found by the next; one seen by two windows is reported once,
    with its best score; offsets index the original text."""
    engine, runtime = fake_engine(
        tiny_bundle, ner_max_length=10, ner_stride=4
    )  # windows of 8 tokens, 4 apart
    text = "我爱的人在是了天安门有和大北京的人是了我爱北京大学的人"
    # chars 7..9 = 天安门 crosses the end of window 0 (tokens 0-7); 北京 at 13 is in windows 2 and 3
    result = engine.run("ner", texts=[text, "张三"]).entities
    got = [(e.start, e.end, e.label, e.text) for e in result[0]]
    expected = sorted(
        [(text.index("天安门"), text.index("天安门") + 3, "LOC", "天安门"), (13, 15, "LOC", "北京"),
         (21, 23, "LOC", "北京"), (21, 25, "ORG", "北京大学")]
    )  # fmt: skip
    assert got == expected
    windows = engine.tokenizer.encode_windows(text, max_length=10, stride=4)
    holders = [w for w in windows if 13 in w.offsets[:, 0].tolist() and 14 in w.offsets[:, 0].tolist()]
    assert len(holders) == 2  # really seen twice
    best = max(10 + 0.01 * w.offsets[:, 0].tolist().index(13) for w in holders)
    assert result[0][1].score == pytest.approx(best)
    assert [(e.text, e.label) for e in result[1]] == [("张三", "PER")]
    assert runtime.rows  # ran through the runtime


def test_flat_decode_applies_after_windows_are_merged(tiny_bundle) -> None:
    """decode="flat": the merged entities of each text reduced to non-overlapping ones (best score
    first, ties by start, end, label); the bundle's decode is the default."""
    engine, _ = fake_engine(tiny_bundle, ner_max_length=10, ner_stride=4)  # as in the test above
    text = "我爱的人在是了天安门有和大北京的人是了我爱北京大学的人"
    nested = engine.run("ner", texts=[text, "我在北京大学"]).entities
    flat = engine.run("ner", texts=[text, "我在北京大学"], decode="flat").entities
    assert [(e.start, e.end, e.label) for e in nested[0]][-2:] == [(21, 23, "LOC"), (21, 25, "ORG")]
    # 北京 at 21 scores 10.06 in a later window, 北京大学 at most 10.03: the merged best scores decide
    assert [(e.start, e.end, e.label, round(e.score, 2)) for e in flat[0]] == [
        (7, 10, "LOC", 10.04), (13, 15, "LOC", 10.06), (21, 23, "LOC", 10.06)
    ]  # fmt: skip
    assert [(e.text, e.label) for e in nested[1]] == [("北京", "LOC"), ("北京大学", "ORG")]
    assert [(e.text, e.label) for e in flat[1]] == [("北京", "LOC")]  # same score: (2, 4, LOC) first
    assert flat == [non_overlapping(ents) for ents in nested]
    assert engine.run("ner", texts=[text], decode="nested").entities == nested[:1]
    flat_ner = engine.manifest.tasks["ner"].model_copy(update={"decode": "flat"})
    engine, _ = fake_engine(tiny_bundle, ner_max_length=10, ner_stride=4, ner_spec=flat_ner)
    assert engine.run("ner", texts=[text, "我在北京大学"]).entities == flat
    assert engine.run("ner", texts=[text], decode="nested").entities == nested[:1]
    assert engine.info()["tasks"]["ner"]["decode"] == "flat"


def test_sync_api_batches_change_nothing(engine: Engine) -> None:
    texts = ["我爱北京天安门", "张三在上海工作", "中国银行", "我" * 150, "李四"]
    one_by_one = [engine.run("ner", texts=[t], threshold=0.3).entities[0] for t in texts]
    small = Engine(engine.runtime, engine.tokenizer, engine.manifest, limits=Limits(batch_tokens=64))
    batched = small.run("ner", texts=texts, threshold=0.3).entities
    for a, b in zip(one_by_one, batched):
        assert [(e.start, e.end, e.label) for e in a] == [(e.start, e.end, e.label) for e in b]
        assert np.allclose([e.score for e in a], [e.score for e in b], atol=1e-4)
    vecs = engine.run("embed", texts=texts).vectors
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert np.allclose(vecs, np.stack([engine.run("embed", texts=[t]).vectors[0] for t in texts]), atol=1e-5)


def test_similarity_truncation_is_reported(engine: Engine) -> None:
    long = "我爱北京" * 20  # 80 tokens > max_length 32
    res = engine.run("embed", texts=["北京", long])
    assert res.truncated == [False, True]
    assert engine.run("similarity", pairs=[["北京", long], ["北京", "上海"]]).truncated == [True, False]
    ranked = engine.run("similarity", query=long, candidates=["北京", long], top_k=1)
    assert ranked.query_truncated and ranked.results[0].index == 1 and ranked.results[0].truncated
    assert ranked.results[0].score == pytest.approx(1.0, abs=1e-5)


def test_decoding_equals_models_spans(engine: Engine) -> None:
    """The batch decoder (per-row thresholds, entity budget) finds exactly what decode_spans finds."""
    texts = ["我爱北京天安门", "张三 在 上海 工作!", "中国银行😀李四", "a b c 北京"]
    for threshold in (0.0, 0.3):
        got = engine.run("ner", texts=texts, threshold=threshold).entities
        for text, ents in zip(texts, got):
            enc = engine.tokenizer.encode(text)
            scores = engine.runtime.run(
                "ner", {"input_ids": enc.ids[None], "attention_mask": np.ones_like(enc.ids)[None]}
            )
            want = decode_spans(scores[0], offsets=enc.offsets, labels=engine.manifest.tasks["ner"].labels, text=text,
                                threshold=threshold)  # fmt: skip
            assert ents == want


def test_entity_budget(engine: Engine) -> None:
    small = Engine(engine.runtime, engine.tokenizer, engine.manifest, limits=Limits(max_entities=50))
    with pytest.raises(TooManyEntities) as e:
        small.run("ner", texts=["我爱北京天安门" * 30], threshold=-10.0)
    assert e.value.limit == 50 and e.value.field == "threshold"
    assert len(small.run("ner", texts=["北京"], threshold=-10.0).entities[0]) <= 50  # small answers still fine


def test_batch_decoding_per_row_thresholds_and_budget(engine: Engine) -> None:
    """Rows of one batch (several requests) decode as each would alone, at its own threshold; each
    request's budget is charged its rows' counts, and rows charged once it is over get nothing decoded
    (that request then fails as a whole, in ``finish``)."""
    texts = ["我爱北京天安门", "张三 在 上海 工作!", "中国银行😀李四", "a b c 北京", "北京"]
    thresholds = [0.5, 1.0, 1.5, 2.0, -1.0]
    encs = engine.tokenizer.encode_batch(texts)
    T, labels = max(len(e) for e in encs), engine.manifest.tasks["ner"].labels
    scores = np.random.default_rng(0).normal(size=(len(texts), len(labels), T, T)).astype(np.float32)
    roomy, tight = EntityBudget(10**6), EntityBudget(3)
    budgets = [roomy, roomy, tight, tight, EntityBudget(10**6)]
    seqs = [Seq(e.ids, Row(e.offsets, t, th, b)) for e, t, th, b in zip(encs, texts, thresholds, budgets)]
    got = engine.task("ner").postprocess(scores, seqs)
    alone = [
        decode_spans(scores[k, :, : len(e), : len(e)], offsets=e.offsets, labels=labels, text=t, threshold=th)
        for k, (e, t, th) in enumerate(zip(encs, texts, thresholds))
    ]
    assert got[:2] == alone[:2] and got[4] == alone[4]
    assert roomy.used == len(alone[0]) + len(alone[1]) and not roomy.exceeded
    assert len(alone[2]) <= 3 < tight.used == len(alone[2]) + len(alone[3]) and tight.exceeded
    assert got[2] == alone[2] and got[3] == []
    with pytest.raises(InferenceError):
        engine.task("ner").postprocess(scores[:, :, :-1, :-1], seqs)
