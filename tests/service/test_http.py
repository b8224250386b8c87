"""Every route and every error of the table, against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.errors import OutOfRange
from service.http import ERROR_STATUS, INFERENCE_ERRORS
from service.tasks.ner import NerResponse
from service.tasks.similarity import EmbedResponse, PairsResponse, RankResponse
from tests.service.conftest import running, settings
from tests.service.fakes import fake_engine

ERROR_KEYS = {"error", "error_type", "field", "limit"}
TIMING = ("x-tokenize-time", "x-queue-time", "x-inference-time", "x-total-time")


def post(base: str, path: str, body, **kw) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(
            base + path, content=body, headers={"content-type": "application/json", **kw}, timeout=30
        )
    return httpx.post(base + path, json=body, headers=kw, timeout=30)


def assert_error(
    r: httpx.Response, status: int, error_type: str, field: str | None = None, limit=None
) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) <= ERROR_KEYS and {"error", "error_type"} <= set(body), body
    assert body["error_type"] == error_type, body
    assert "Traceback" not in r.text
    if field is not None:
        assert field in body["field"], body
    if limit is not None:
        assert body["limit"] == limit, body
    return body


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------


def test_health_ready_info(server: str) -> None:
    assert httpx.get(server + "/health").json() == {"status": "alive"}
    ready = httpx.get(server + "/ready").json()
    assert ready["status"] == "ready" and ready["provider"] == "cpu" and ready["precision"]["ner"] == "fp32"
    info = httpx.get(server + "/info").json()
    assert info["tasks"]["ner"]["labels"] == ["LOC", "ORG", "PER"]
    assert info["tasks"]["similarity"]["dim"] == 32
    assert info["limits"]["max_items"] == 64 and info["limits"]["max_chars"] == 10_000
    assert info["version"] and info["provider"] == "cpu" and info["name"] == "tiny"


def test_ner_matches_direct_calls_in_input_order(server: str, engine) -> None:
    texts = ["张三在上海工作", "", "我爱北京天安门", "中国银行" * 30, "北京"]
    r = post(server, "/ner", {"texts": texts, "threshold": 0.3})
    assert r.status_code == 200, r.text
    assert all(float(r.headers[h]) >= 0 for h in TIMING)
    results = NerResponse.model_validate(r.json()).results
    assert len(results) == len(texts)
    for text, item in zip(texts, results):
        direct = engine.run("ner", texts=[text], threshold=0.3).entities[0]
        assert [(e.start, e.end, e.label) for e in item.entities] == [
            (e.start, e.end, e.label) for e in direct
        ]
        assert np.allclose([e.score for e in item.entities], [e.score for e in direct], atol=1e-4)
        for e in item.entities:
            assert e.text == text[e.start : e.end] and e.score > 0.3
        assert [(e.start, e.end) for e in item.entities] == sorted((e.start, e.end) for e in item.entities)
    # the bundle's own threshold (0.0) when none is given: more entities than at 0.3
    default = post(server, "/ner", {"texts": texts[:1]}).json()["results"][0]["entities"]
    assert len(default) >= len(results[0].entities)


def _overlapping(entities) -> list[tuple]:
    spans = [(e["start"], e["end"]) for e in entities]
    return [(a, b) for a in spans for b in spans if a < b and a[0] < b[1] and b[0] < a[1]]


def test_ner_flat_decode_returns_no_overlapping_spans(server: str, engine) -> None:
    texts = ["张三在上海工作", "我爱北京天安门"]
    nested = post(server, "/ner", {"texts": texts})
    flat = post(server, "/ner", {"texts": texts, "decode": "flat"})
    assert nested.status_code == flat.status_code == 200, (nested.text, flat.text)
    assert httpx.get(server + "/info").json()["tasks"]["ner"]["decode"] == "nested"  # the bundle's default
    direct = engine.run("ner", texts=texts).entities  # the default is what it was: every span above the threshold
    for ents, n, f in zip(direct, nested.json()["results"], flat.json()["results"]):
        n, f = n["entities"], f["entities"]
        assert [(e["start"], e["end"], e["label"]) for e in n] == [(e.start, e.end, e.label) for e in ents]
        assert _overlapping(n) and not _overlapping(f)  # the random tiny model nests a lot at threshold 0
        assert 0 < len(f) < len(n) and all(e in n for e in f)
        best = max(n, key=lambda e: e["score"])
        assert best in f  # the best-scoring span always survives
        for e in n:  # every span dropped overlaps a kept one scoring at least as high
            if e not in f:
                assert any(
                    k["score"] >= e["score"] and k["start"] < e["end"] and e["start"] < k["end"] for k in f
                )
    assert [(e["start"], e["end"], e["label"]) for e in flat.json()["results"][0]["entities"]] == [
        (0, 1, "PER"), (1, 3, "PER"), (3, 4, "LOC"), (4, 7, "PER")
    ]  # fmt: skip
    assert post(server, "/ner", {"texts": texts, "decode": None}).json() == nested.json()  # null: the default
    for bad in ("bogus", 1):
        r = post(server, "/ner", {"texts": ["a"], "decode": bad})
        body = assert_error(r, 422, "invalid_request", "decode")
        assert "'nested'" in body["error"] and "'flat'" in body["error"], body


def test_similarity_and_embed_agree(server: str) -> None:
    texts = ["我爱北京", "我爱上海", "张三", "我爱北京" * 20]
    emb = post(server, "/embed", {"texts": texts})
    assert emb.status_code == 200 and all(h in emb.headers for h in TIMING)
    body = EmbedResponse.model_validate(emb.json())
    vecs = np.array(body.vectors)
    assert body.dim == 32 and vecs.shape == (4, 32) and body.truncated == [False, False, False, True]
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)

    pairs = post(server, "/similarity", {"pairs": [[texts[0], texts[1]], [texts[2], texts[3]]]})
    scores = PairsResponse.model_validate(pairs.json())
    assert np.allclose(scores.scores, [vecs[0] @ vecs[1], vecs[2] @ vecs[3]], atol=1e-5)
    assert scores.truncated == [False, True]

    ranked = post(server, "/similarity", {"query": texts[0], "candidates": texts, "top_k": 3})
    rank = RankResponse.model_validate(ranked.json())
    expected = sorted(range(4), key=lambda k: -(vecs[0] @ vecs[k]))[:3]
    assert [x.index for x in rank.results] == expected and rank.results[0].index == 0
    assert [x.text for x in rank.results] == [texts[k] for k in expected]
    assert not rank.query_truncated
    everything = post(server, "/similarity", {"query": texts[0], "candidates": texts[:2]}).json()
    assert len(everything["results"]) == 2


def test_openapi_responses_come_from_the_error_table(server: str) -> None:
    schema = httpx.get(server + "/schema/openapi.json").json()
    assert {"/ner", "/similarity", "/embed", "/health", "/ready", "/info"} <= set(schema["paths"])
    ner = schema["paths"]["/ner"]["post"]["responses"]
    assert {int(s) for s in ner} == {200} | {ERROR_STATUS[c] for c in (*INFERENCE_ERRORS, OutOfRange)}
    assert "too_many_entities" in ner["422"]["description"] and "out_of_range" in ner["422"]["description"]
    assert "text_too_long" in ner["413"]["description"] and "too_many_items" in ner["413"]["description"]
    assert httpx.get(server + "/schema").status_code == 200  # the docs page
    ner_body = next(iter(schema["paths"]["/ner"]["post"]["requestBody"]["content"].values()))["schema"]
    props = schema["components"]["schemas"][ner_body["$ref"].rsplit("/", 1)[1]]["properties"]
    assert "flat" in props["decode"]["description"] and "nested" in json.dumps(props["decode"])


# --------------------------------------------------------------------------------------------
# The error table
# --------------------------------------------------------------------------------------------

BIG = "北" * 1_000_000  # 1 MB of characters (3 MB of UTF-8)

ERROR_CASES = [
    # (path, body, status, error_type, field, limit)
    ("/ner", {"texts": []}, 400, "empty_input", "texts", None),
    ("/embed", {"texts": []}, 400, "empty_input", "texts", None),
    ("/similarity", {"pairs": []}, 400, "empty_input", "pairs", None),
    ("/similarity", {"query": "a", "candidates": []}, 400, "empty_input", "candidates", None),
    ("/ner", {"texts": ["a"] * 10_000}, 413, "too_many_items", "texts", 64),
    ("/similarity", {"pairs": [["a", "b"]] * 65}, 413, "too_many_items", "pairs", 64),
    ("/ner", {"texts": [BIG]}, 413, "text_too_long", "texts[0]", 10_000),
    ("/similarity", {"query": BIG[:10_001], "candidates": ["a"]}, 413, "text_too_long", "query", 10_000),
    ("/embed", {"texts": ["x" * (5 << 20)]}, 413, "body_too_large", "body", 4 << 20),
    ("/ner", b'{"texts": ["\xff\xfe"]}', 400, "malformed_body", "body", None),
    ("/ner", b'{"texts": ["a"', 400, "malformed_body", "body", None),
    ("/ner", b'{"texts": ["\\ud800"]}', 400, "malformed_body", "body", None),
    ("/ner", b"", 422, "invalid_request", "body", None),
    ("/ner", [{"texts": ["a"]}], 422, "invalid_request", "body", None),
    ("/ner", "just a string", 422, "invalid_request", "body", None),
    ("/ner", {"texts": None}, 422, "invalid_request", "texts", None),
    ("/ner", {"texts": ["a", None]}, 422, "invalid_request", "texts[1]", None),
    ("/ner", {"texts": "abc"}, 422, "invalid_request", "texts", None),
    ("/ner", {"texts": [1, 2]}, 422, "invalid_request", "texts[0]", None),
    ("/ner", {"texts": ["a"], "threshold": "0.5"}, 422, "invalid_request", "threshold", None),
    ("/ner", {"texts": ["a"], "threshold": 100}, 422, "out_of_range", "threshold", 10.0),
    ("/ner", {"texts": ["a"], "extra": 1}, 422, "invalid_request", "extra", None),
    ("/ner", {"text": ["a"]}, 422, "invalid_request", None, None),
    ("/embed", {"texts": [{"a": 1}]}, 422, "invalid_request", "texts[0]", None),
    ("/similarity", {}, 422, "invalid_request", "pairs", None),
    (
        "/similarity",
        {"pairs": [["a", "b"]], "query": "a", "candidates": ["b"]},
        422,
        "invalid_request",
        "query",
        None,
    ),
    ("/similarity", {"query": "a"}, 422, "invalid_request", "candidates", None),
    ("/similarity", {"pairs": [["a", "b", "c"]]}, 422, "invalid_request", "pairs[0]", None),
    ("/similarity", {"pairs": [["a", None]]}, 422, "invalid_request", "pairs[0][1]", None),
    ("/similarity", {"query": "a", "candidates": ["b"], "top_k": 1.5}, 422, "invalid_request", "top_k", None),
    ("/similarity", {"query": "a", "candidates": ["b"], "top_k": 0}, 422, "out_of_range", "top_k", 1),
]


@pytest.mark.parametrize("path, body, status, error_type, field, limit", ERROR_CASES)
def test_error_table(server: str, path, body, status, error_type, field, limit) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    assert_error(post(server, path, raw), status, error_type, field, limit)


def test_too_many_entities(tiny_bundle) -> None:
    with running(settings(bundle=tiny_bundle, max_entities=100)) as base:
        r = post(base, "/ner", {"texts": ["我爱北京天安门" * 100, "北京"], "threshold": -10})
        assert_error(r, 422, "too_many_entities", "threshold", 100)
        assert post(base, "/ner", {"texts": ["北京"], "threshold": 0.3}).status_code == 200


def test_routing_errors_have_our_shape_and_the_server_survives(server: str) -> None:
    assert_error(httpx.get(server + "/nope"), 404, "not_found")
    assert_error(httpx.get(server + "/ner"), 405, "method_not_allowed")
    assert httpx.get(server + "/health").status_code == 200
    assert post(server, "/ner", {"texts": ["北京"]}).status_code == 200


# --------------------------------------------------------------------------------------------
# Metrics, API key, failures, readiness
# --------------------------------------------------------------------------------------------


def scrape(base: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from /metrics, parsed by prometheus_client."""
    r = httpx.get(base + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics(server: str) -> None:
    before = scrape(server)
    for _ in range(3):
        assert post(server, "/ner", {"texts": ["北京", "上海"]}).status_code == 200
    post(server, "/ner", {"texts": []})
    after = scrape(server)
    key = (("method", "POST"), ("route", "/ner"), ("status", "200"))
    assert after["ropenlp_requests_total"][key] - before["ropenlp_requests_total"].get(key, 0) == 3
    key400 = (("method", "POST"), ("route", "/ner"), ("status", "400"))
    assert after["ropenlp_requests_total"][key400] - before["ropenlp_requests_total"].get(key400, 0) == 1
    lat = (("route", "/ner"), ("status", "200"))
    assert (
        after["ropenlp_request_duration_seconds_count"][lat]
        - before["ropenlp_request_duration_seconds_count"].get(lat, 0)
        == 3
    )
    for stage in ("tokenize", "queue", "inference"):
        k = (("route", "/ner"), ("stage", stage))
        assert after["ropenlp_stage_seconds_count"][k] - before["ropenlp_stage_seconds_count"].get(k, 0) == 3
    ner = (("task", "ner"),)
    batches = after["ropenlp_batch_sequences_count"][ner] - before["ropenlp_batch_sequences_count"].get(
        ner, 0
    )
    assert 1 <= batches <= 3
    assert after["ropenlp_batch_sequences_sum"][ner] - before["ropenlp_batch_sequences_sum"].get(ner, 0) == 6
    assert (
        after["ropenlp_batch_tokens_sum"][ner] > 0
        and after["ropenlp_inference_seconds_count"][ner] >= batches
    )
    assert after["ropenlp_batch_requests_count"][ner] >= batches
    assert after["ropenlp_queue_requests"][()] == 0 and after["ropenlp_queue_sequences"][()] == 0
    assert after["ropenlp_ready"][()] == 1
    assert any(dict(k)["provider"] == "cpu" for k in after["ropenlp_model_info"])


def test_api_key(tiny_bundle) -> None:
    engine, _ = fake_engine(tiny_bundle)
    with running(settings(api_key="s3cret-key"), engine) as base:
        body = {"texts": ["北京"]}
        r = post(base, "/ner", body)
        assert_error(r, 401, "unauthorized", "authorization")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_error(post(base, "/ner", body, authorization="Bearer wrong"), 401, "unauthorized")
        assert_error(post(base, "/embed", body, authorization="s3cret-key"), 401, "unauthorized")
        assert post(base, "/ner", body, authorization="Bearer s3cret-key").status_code == 200
        assert post(base, "/embed", body, authorization="bearer s3cret-key").status_code == 200
        for open_route in ("/health", "/ready", "/metrics", "/info"):
            assert httpx.get(base + open_route).status_code == 200, open_route
        assert httpx.get(base + "/info").json()["auth"] is True
    with running(settings(), fake_engine(tiny_bundle)[0]) as base:  # no key configured: open
        assert post(base, "/ner", {"texts": ["北京"]}).status_code == 200


def test_inference_failure_is_a_500_without_trace(tiny_bundle) -> None:
    from models.text import Tokenizer

    fail_on = Tokenizer.load(tiny_bundle / "tokenizer.json").token_to_id("十")
    engine, _ = fake_engine(tiny_bundle, fail_on_id=fail_on)  # rows holding 十 fail
    with running(settings(), engine) as base:
        assert_error(post(base, "/ner", {"texts": ["北京", "十"]}), 500, "inference_error")
        r = post(base, "/embed", {"texts": ["十"]})
        assert_error(r, 500, "inference_error")
        assert r.json()["error"] == "inference failed"  # details in the log only
        ok = post(base, "/ner", {"texts": ["北京"]})  # the server goes on
        assert ok.status_code == 200 and ok.json()["results"][0]["entities"][0]["text"] == "北京"


def test_not_ready_until_warm(tiny_bundle) -> None:
    import threading

    engine, runtime = fake_engine(tiny_bundle)
    runtime.gate = threading.Event()  # the warm-up blocks the worker
    with running(settings(), engine, ready=False) as base:
        r = httpx.get(base + "/ready")
        assert_error(r, 503, "not_ready")
        assert int(r.headers["retry-after"]) >= 1
        assert_error(post(base, "/ner", {"texts": ["北京"]}), 503, "not_ready")
        assert httpx.get(base + "/health").status_code == 200
        runtime.gate.set()
        runtime.gate = None
        from tests.service.conftest import wait_ready

        wait_ready(base)
        assert post(base, "/ner", {"texts": ["北京"]}).status_code == 200


def test_task_unavailable_and_internal_errors(tiny_bundle) -> None:
    engine, _ = fake_engine(tiny_bundle, similarity_only=True)
    prepare = engine.prepare

    def broken(name, query):
        if name == "similarity":
            raise ZeroDivisionError("a bug")
        return prepare(name, query)

    engine.prepare = broken
    with running(settings(), engine) as base:
        assert_error(post(base, "/ner", {"texts": ["北京"]}), 501, "task_unavailable")
        r = post(base, "/similarity", {"pairs": [["北京", "上海"]]})
        assert_error(r, 500, "internal_error")
        assert "a bug" not in r.text and "ZeroDivision" not in r.text
        assert post(base, "/embed", {"texts": ["北京"]}).status_code == 200
        assert "ner" not in httpx.get(base + "/info").json()["tasks"]
