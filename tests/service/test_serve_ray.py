"""Ray Serve: the Litestar app as a replica behind Ray Serve's proxy answers /ready and /ner as the
app does behind uvicorn (the session's one-node cluster, ``ray_cluster``)."""

from __future__ import annotations

import socket
from pathlib import Path
import time

import httpx
import pytest

from tests.service.conftest import settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_base(ray_cluster, tiny_bundle):
    from ray import serve

    from service.serve_ray import APP_NAME, application

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application(settings(bundle=tiny_bundle, log_level="warning"), replicas=1), name=APP_NAME,
                  route_prefix="/", blocking=False)  # fmt: skip
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def test_a_replica_answers_ready_and_ner(serve_base, engine) -> None:
    deadline = time.monotonic() + 60
    while (r := httpx.get(f"{serve_base}/ready")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)  # 503 until the replica's lifespan has loaded and warmed the engine
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    texts = ["北京大学的张三去了上海。", "李四在中国银行工作"]
    r = httpx.post(f"{serve_base}/ner", json={"texts": texts, "threshold": -1.0})
    assert r.status_code == 200, r.text
    assert "x-inference-time" in r.headers and "x-total-time" in r.headers  # the app's own layer ran
    want = engine.run("ner", texts=texts, threshold=-1.0)
    got = r.json()["results"]
    assert [[(e["start"], e["end"], e["label"]) for e in g["entities"]] for g in got] == [
        [(e.start, e.end, e.label) for e in ents] for ents in want.entities
    ]
    r = httpx.post(f"{serve_base}/ner", json={"texts": []})
    assert r.status_code == 400 and r.json()["error_type"] == "empty_input"  # the app's error table


def test_the_serve_run_config_builds_the_application(tiny_bundle) -> None:
    """deploy/ray-serve.yaml's import path and args build the application (no cluster needed)."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'ropenlp[ray]'")
    import yaml

    from service.serve_ray import build

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy/ray-serve.yaml").read_text())
    app = config["applications"][0]
    assert app["import_path"] == "service.serve_ray:build"
    deployment = build({**app["args"], "bundle": str(tiny_bundle)})._bound_deployment
    assert deployment.num_replicas == app["args"]["ray_replicas"]
    assert deployment.ray_actor_options["num_cpus"] == app["args"]["intra_op_threads"]
