"""The OpenAPI document is the contract: exact request schemas from the served limits (and, for
``/v1/embeddings``, the served bundle), the statuses of content negotiation, and schemathesis
(``--checks all``, ``schemathesis.toml``) finding nothing against a real ``ropenlp serve`` process."""

from __future__ import annotations

import time
import tomllib

import httpx
import pytest

from models.bundle import load_manifest
from tests.servers import REPO, server_process
from tests.service.conftest import running, settings
from tests.service.fakes import fake_engine
from tests.service.test_http import assert_error, post

MAX_ITEMS, MAX_CHARS = 4, 48


def body_schema(doc: dict, path: str) -> dict:
    ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]  # the query model, by name


def test_request_schemas_state_the_served_limits(tiny_bundle) -> None:
    s = settings(bundle=tiny_bundle, max_items=MAX_ITEMS, max_chars=MAX_CHARS, threshold_min=-2, threshold_max=3)
    with running(s) as base:
        doc = httpx.get(base + "/schema/openapi.json").json()
        ner = body_schema(doc, "/ner")
        texts = ner["properties"]["texts"]
        assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, MAX_ITEMS, MAX_CHARS)
        assert ner["additionalProperties"] is False and ner["required"] == ["texts"]
        assert {"type": "number", "minimum": -2, "maximum": 3} in ner["properties"]["threshold"]["anyOf"]
        assert {"type": "string", "enum": ["nested", "flat"]} in ner["properties"]["decode"]["anyOf"]
        pairs, rank = body_schema(doc, "/similarity")["oneOf"]
        assert pairs["required"] == ["pairs"] and pairs["properties"]["query"]["type"] == "null"
        assert pairs["properties"]["pairs"]["items"]["minItems"] == pairs["properties"]["pairs"]["items"]["maxItems"] == 2
        assert rank["required"] == ["query", "candidates"] and rank["properties"]["pairs"]["type"] == "null"
        assert rank["properties"]["candidates"]["maxItems"] == MAX_ITEMS
        assert {"type": "integer", "minimum": 1} in rank["properties"]["top_k"]["anyOf"]
        assert body_schema(doc, "/embed")["properties"]["texts"]["maxItems"] == MAX_ITEMS
        v1 = body_schema(doc, "/v1/embeddings")
        assert v1["additionalProperties"] is False and v1["required"] == ["input"]
        one, many = v1["properties"]["input"]["anyOf"]
        assert one == {"type": "string", "maxLength": MAX_CHARS}  # empty texts too: embed takes them
        assert (many["minItems"], many["maxItems"], many["items"]) == (1, MAX_ITEMS, one)
        assert v1["properties"]["encoding_format"]["enum"] == ["float", "base64"]
        sim = load_manifest(tiny_bundle).tasks["similarity"]
        assert sim.whitening  # the tiny bundle's, by the identity
        assert {"type": "integer", "minimum": 1, "maximum": sim.dim} in v1["properties"]["dimensions"]["anyOf"]
        r = post(base, "/v1/embeddings", {"input": ["", "北京"], "dimensions": 8.0})  # an integer, to JSON
        assert r.status_code == 200 and [len(d["embedding"]) for d in r.json()["data"]] == [8, 8], r.text
        assert doc["components"]["schemas"]["ErrorBody"]["properties"]["limit"]["oneOf"][0] == {"type": "number"}
        # what the schema calls an integer, the server takes as one
        r = post(base, "/similarity", {"query": "北京", "candidates": ["上海", "北京", "天安门"], "top_k": 2.0})
        assert r.status_code == 200 and len(r.json()["results"]) == 2, r.text
        assert_error(post(base, "/similarity", {"query": "a", "candidates": ["b"], "top_k": 2.5}), 422,
                     "invalid_request", "top_k")  # fmt: skip


@pytest.mark.parametrize("bundle, status", [("unwhitened", 400), ("without similarity", 501)])
def test_v1_contract_follows_the_served_bundle(tiny_bundle, bundle, status) -> None:
    """Not whitened: ``dimensions`` is null in the schema, 400 when given. No similarity task: 501, documented."""
    sim = load_manifest(tiny_bundle).tasks["similarity"]
    kw = {"similarity_spec": sim.model_copy(update={"whitening": False})} if status == 400 else {"ner_only": True}
    engine, _ = fake_engine(tiny_bundle, **kw)
    with running(settings(), engine) as base:
        doc = httpx.get(base + "/schema/openapi.json").json()
        assert body_schema(doc, "/v1/embeddings")["properties"]["dimensions"]["type"] == "null"
        responses = doc["paths"]["/v1/embeddings"]["post"]["responses"]
        assert responses[str(status)]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
        r = post(base, "/v1/embeddings", {"input": "北京", "dimensions": 8})
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
        if status == 400:
            assert r.json()["error"]["param"] == "dimensions" and "whitened" in r.json()["error"]["message"]
        else:
            assert r.json()["error"]["code"] == "task_unavailable" and "similarity" in r.json()["error"]["message"]


def test_v1_errors_have_openai_shape_routed_or_not(tiny_bundle) -> None:
    """405 (no route's own handler sees it), 404, 406, 415 and 413 under /v1: OpenAI's error body, declared
    with it in the OpenAPI document; the rest of the API keeps ropenlp's."""
    with running(settings(bundle=tiny_bundle, max_body_bytes=2048)) as base:
        big = ('{"input": ["' + "北" * 3000 + '"]}').encode()
        cases = [
            (httpx.put(base + "/v1/embeddings", json={"input": "a"}), 405, "method_not_allowed"),
            (httpx.delete(base + "/v1/models"), 405, "method_not_allowed"),
            (httpx.get(base + "/v1/nowhere"), 404, "not_found"),
            (httpx.get(base + "/v1/models/gpt-4"), 404, "not_found"),
            (post(base, "/v1/embeddings", {"input": "a"}, accept="text/html"), 406, "not_acceptable"),
            (httpx.get(base + "/v1/models", headers={"accept": "text/html"}), 406, "not_acceptable"),
            (httpx.post(base + "/v1/embeddings", content=b'{"input": "a"}',
                        headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
            (post(base, "/v1/embeddings", big), 413, "body_too_large"),
        ]  # fmt: skip
        for r, status, code in cases:
            assert r.status_code == status, (r.request.method, r.request.url, r.text)
            assert set(r.json()) == {"error"} and r.json()["error"]["code"] == code, r.text
        assert {m.strip() for m in cases[0][0].headers["allow"].split(",")} >= {"POST"}
        doc = httpx.get(base + "/schema/openapi.json").json()
        declared = {("/v1/embeddings", "post"): {400, 401, 405, 406, 413, 415, 429, 500, 501, 503},
                    ("/v1/models", "get"): {401, 405, 406, 503},
                    ("/v1/models/{model_id}", "get"): {400, 401, 404, 405, 406, 503}}  # fmt: skip
        for (path, method), statuses in declared.items():
            responses = doc["paths"][path][method]["responses"]
            assert {int(s) for s in responses} == {200, *statuses}, (path, sorted(responses))
            assert all(r["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
                       for s, r in responses.items() if s != "200"), path  # fmt: skip
        assert_error(httpx.put(base + "/ner", json={"texts": ["a"]}), 405, "method_not_allowed")  # ropenlp's body


def test_method_not_allowed_lists_the_allowed_ones(server: str) -> None:
    r = httpx.put(server + "/ner", json={"texts": ["a"]})
    assert_error(r, 405, "method_not_allowed")
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"POST"}
    r = httpx.delete(server + "/health")
    assert r.status_code == 405 and "GET" in r.headers["allow"]


def test_body_too_large_wrong_content_type_and_not_acceptable(tiny_bundle) -> None:
    with running(settings(bundle=tiny_bundle, max_body_bytes=2048)) as base:
        big = ('{"texts": ["' + "北" * 3000 + '"]}').encode()
        assert_error(post(base, "/ner", big), 413, "body_too_large", "body", 2048)
        chunked = httpx.post(base + "/ner", content=iter([big[:1000], big[1000:]]),
                             headers={"content-type": "application/json"})  # fmt: skip
        assert_error(chunked, 413, "body_too_large", "body", 2048)
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            r = httpx.post(base + "/ner", content=b'{"texts": ["a"]}', headers={"content-type": content_type})
            assert_error(r, 415, "unsupported_media_type", "content-type")
        for content_type in ("application/json; charset=utf-8", "application/problem+json"):
            r = httpx.post(base + "/ner", content=b'{"texts": ["a"]}', headers={"content-type": content_type})
            assert r.status_code == 200, r.text
        assert httpx.post(base + "/ner", content=b'{"texts": ["a"]}').status_code == 200  # no Content-Type: JSON
        for accept in ("text/html", "application/xml, text/plain;q=0.5"):
            assert_error(post(base, "/ner", {"texts": ["a"]}, accept=accept), 406, "not_acceptable", "accept")
            assert_error(httpx.get(base + "/health", headers={"accept": accept}), 406, "not_acceptable")
        for accept in ("*/*", "application/*", "text/html, application/json;q=0.1"):
            assert post(base, "/ner", {"texts": ["a"]}, accept=accept).status_code == 200
        # the routes that are not JSON keep answering whatever the Accept header says
        assert httpx.get(base + "/metrics", headers={"accept": "text/plain"}).status_code == 200
        assert httpx.get(base + "/", headers={"accept": "text/html"}).status_code == 200


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~20 s on a quiet machine; minutes when training shares its 2 cores
def test_schemathesis_finds_nothing(tiny_bundle, tmp_path) -> None:
    """``schemathesis run URL --checks all`` through its Python API: coverage and fuzzing phases, positive
    and negative data, a fixed seed, deterministic generation, a bounded number of examples per route,
    every route of the document (the OpenAI-compatible /v1 ones included: the tiny bundle is whitened,
    so ``dimensions`` has a range to explore)."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.engine import Status, events

    # limits small enough that no schema-valid request can exceed max_entities (the one limit that
    # depends on the model's output, not on the request): 4 texts x 3 labels x 50*51/2 spans < 20,000
    env = {"ROPENLP_MAX_ITEMS": str(MAX_ITEMS), "ROPENLP_MAX_CHARS": str(MAX_CHARS), "ROPENLP_MAX_WAIT_MS": "0"}
    argv = ["-m", "ropenlp", "serve", "--bundle", str(tiny_bundle)]
    with server_process(argv, tmp_path / "server.log", env=env) as server:
        config = tomllib.loads((REPO / "schemathesis.toml").read_text())
        config |= {"seed": 20, "generation": {"deterministic": True, "max-examples": 120},
                   "cache": {"enabled": False},  # nothing carried over from earlier runs
                   "checks": {"enabled": True, **config.get("checks", {})}}  # fmt: skip
        schema = schemathesis.openapi.from_url(f"{server.base}/schema/openapi.json",
                                               config=schemathesis.Config.from_dict(config))  # fmt: skip
        t0 = time.perf_counter()
        cases, sent, failures, errors = 0, 0, [], []
        per_route: dict[str, int] = {}
        for event in schemathesis.engine.from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                rec = event.recorder
                cases += len(rec.cases)
                sent += sum(1 for i in rec.interactions.values() if i.response is not None)
                per_route[rec.label] = per_route.get(rec.label, 0) + len(rec.cases)
                failures += [f"{rec.label}: {c.failure_info.failure.title}\n{c.failure_info.code_sample}"
                             for checks in rec.checks.values() for c in checks
                             if c.status == Status.FAILURE and c.failure_info is not None]  # fmt: skip
            elif isinstance(event, (events.NonFatalError, events.FatalError)):
                errors.append(repr(getattr(event, "value", None) or getattr(event, "exception", None)))
        seconds = time.perf_counter() - t0
        print(f"schemathesis: {cases} cases ({sent} requests) in {seconds:.1f} s: {per_route}")
        assert not errors, errors
        assert not failures, "\n\n".join(failures[:10])
        assert cases >= 1000 and sent >= 1000, (cases, sent, per_route)
        assert server.proc.poll() is None  # the server is still up
        assert "Traceback" not in server.output(), server.output()[-3000:]
