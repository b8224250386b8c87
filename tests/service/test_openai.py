"""``/v1/embeddings`` and ``/v1/models`` driven by the official ``openai`` client against a real uvicorn
server on 127.0.0.1 serving the shipped default bundle (not whitened: whitening was measured to cost
similarity, so ``dimensions`` is refused with a message saying why) and the tiny test bundle (whitened:
``dimensions`` applies)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from service.http.openai import shorten
from tests.service.conftest import running, settings
from tests.service.test_default_bundle import DEFAULT

openai = pytest.importorskip("openai")

TEXTS = ["今天天气怎么样", "今天的天气如何", "我想买一部手机"]


@pytest.fixture(scope="module")
def base():
    with running(settings(bundle=DEFAULT, max_wait_ms=1)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=30)


def embed_of(url: str) -> np.ndarray:
    """The same texts through ropenlp's own /embed: the reference."""
    r = httpx.post(url + "/embed", json={"texts": TEXTS}, timeout=30)
    assert r.status_code == 200, r.text
    return np.array(r.json()["vectors"], dtype=np.float32)


@pytest.fixture(scope="module")
def embed(base) -> np.ndarray:
    return embed_of(base)


@pytest.fixture(scope="module")
def whitened(tiny_bundle):
    """A whitened bundle's server (the tiny test bundle: 32 dimensions) and its /embed vectors."""
    with running(settings(bundle=tiny_bundle, max_wait_ms=1)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30), embed_of(url), url


def test_float_and_base64_are_the_embed_vectors(client, embed) -> None:
    from service.core import Engine

    got = client.embeddings.create(model="anything", input=TEXTS, encoding_format="float")
    assert got.object == "list" and got.model == "ropenlp-default-small"
    assert [d.index for d in got.data] == [0, 1, 2] and all(d.object == "embedding" for d in got.data)
    vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
    assert vectors.shape == (3, 256)
    np.testing.assert_allclose(vectors, embed, rtol=0, atol=1e-6)
    # usage from the bundle's tokenizer: [CLS] + one token per character + [SEP]
    tokens = sum(len(ids) for ids in Engine.load(DEFAULT).tokenizer.encode_ids(TEXTS))
    assert tokens == sum(len(t) + 2 for t in TEXTS)
    assert got.usage.prompt_tokens == got.usage.total_tokens == tokens
    # the client asks for base64 by default and decodes it (little-endian float32)
    default = client.embeddings.create(model="anything", input=TEXTS)
    np.testing.assert_array_equal(np.array([d.embedding for d in default.data], dtype=np.float32), vectors)


def test_raw_base64_is_little_endian_float32(base) -> None:
    r = httpx.post(base + "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64", "model": "m"})
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    alone = httpx.post(base + "/embed", json={"texts": TEXTS[:1]}).json()["vectors"][0]  # the same batch: one text
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4"), alone, atol=1e-6)


@pytest.mark.parametrize("d", [1, 8, 20, 32])
def test_dimensions_shorten_and_renormalise(whitened, d) -> None:
    client, embed, _ = whitened
    for fmt in ("float", "base64"):
        got = client.embeddings.create(model="m", input=TEXTS, dimensions=d, encoding_format=fmt)
        # asked for explicitly, base64 comes back as the string (the client decodes only its own default)
        v = np.array([np.frombuffer(base64.b64decode(e.embedding), "<f4") if fmt == "base64" else e.embedding
                      for e in got.data], dtype=np.float32)
        assert v.shape == (3, d)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(v, shorten(embed, d), rtol=0, atol=1e-6)


def test_dimensions_on_a_bundle_without_whitening_says_why(client, base) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input="x", dimensions=64)
    assert e.value.body["param"] == "dimensions" and "not whitened" in e.value.body["message"]
    doc = httpx.get(base + "/schema/openapi.json").json()  # and the contract says so: null only
    schema = doc["components"]["schemas"]["EmbeddingsRequest"]["properties"]["dimensions"]
    assert schema.get("type") == "null" or schema.get("anyOf") == [{"type": "null"}], schema


def test_models_list_and_retrieve(client) -> None:
    (m,) = client.models.list().data
    assert m.id == "ropenlp-default-small" and m.object == "model" and m.owned_by == "ropenlp" and m.created > 0
    assert client.models.retrieve(m.id).id == m.id
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "not_found" and e.value.body["param"] == "model"


@pytest.mark.parametrize("body, param, code", [
    ({"input": "x", "dimensions": 8}, "dimensions", "invalid_request"),  # the default bundle is not whitened
    ({"input": "x", "dimensions": "8"}, "dimensions", "invalid_request"),
    ({"input": [[101, 102]]}, "input", "invalid_request"),
    ({"input": [1, 2, 3]}, "input", "invalid_request"),
    ({"input": []}, "input", "invalid_request"),
    ({"input": ["ok", 3]}, "input", "invalid_request"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "invalid_request"),
    ({"input": "x", "temperature": 1}, "temperature", "invalid_request"),
    ({"model": "m"}, "input", "invalid_request"),
    ({"input": ["x" * 10_001]}, "input[0]", "text_too_long"),
    ({"input": ["x"] * 65}, "input", "too_many_items"),
])
def test_errors_in_openai_shape(base, body, param, code) -> None:
    r = httpx.post(base + "/v1/embeddings", json=body, timeout=30)
    assert r.status_code in (400, 413), r.text
    err = r.json()["error"]
    assert set(r.json()) == {"error"} and set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code, err
    assert param.split("[")[0] in err["message"]


@pytest.mark.parametrize("d", [0, 33])
def test_dimensions_out_of_range(whitened, d) -> None:
    client, _, url = whitened
    r = httpx.post(url + "/v1/embeddings", json={"input": "x", "dimensions": d}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "out_of_range", r.text
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input="x", dimensions=d)
    assert "[1, 32]" in e.value.body["message"] and e.value.body["param"] == "dimensions"


def test_client_sees_bad_requests_and_the_rest_of_the_api_keeps_its_shape(client, base) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input=[[101, 102]])
    assert e.value.body["param"] == "input" and "token-id arrays" in e.value.body["message"]
    r = httpx.post(base + "/embed", json={"texts": []})
    assert r.status_code == 400 and r.json()["error_type"] == "empty_input"  # ropenlp's own error body


def test_api_key(tmp_path) -> None:
    with running(settings(bundle=DEFAULT, api_key="s3cret")) as url:
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.embeddings.create(model="m", input="x")
        assert e.value.body["type"] == "authentication_error" and e.value.body["param"] == "authorization"
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert len(good.embeddings.create(model="m", input="x").data[0].embedding) == 256
        assert good.models.list().data[0].id == "ropenlp-default-small"
