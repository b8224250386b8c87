"""Fixtures for the service: a tiny real bundle (built once per session), real uvicorn servers.

* ``tiny_bundle``: random 2-layer, 32-dim NerModel (LOC / ORG / PER) and SimilarityModel saved with
  ``models.tasks`` and exported with ``export.onnx.export_bundle`` (fp32). The similarity model is
  whitened by the identity (its vectors are the unwhitened ones, 32 dims), so the routes that need a
  whitened bundle (``/v1/embeddings``' ``dimensions``) run on it too.
* ``running(settings)``: the app behind real uvicorn (``tests.servers.serve``), ready to take requests.
* ``FakeRuntime`` (tests/service/fakes.py) stands in for ONNX Runtime where a test needs known
  entities, a slow model, a blocked worker or a failing one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.servers import serve

VOCAB_CHARS = list("我爱北京天安门上海的人中国张三李四工作在是了有和大学银行公司一二三四五六七八九十月日年")
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *VOCAB_CHARS,
    *"abcdefghijklmnopqrstuvwxyz0123456789,.!?，。！？",
]
LABELS = ("LOC", "ORG", "PER")


def build_tiny_bundle(root: Path) -> Path:
    """Write the tiny random bundle (fp32, both tasks) under ``root``; return its directory ``root/tiny``.

    A plain function so that scripts (``bench/cli.py`` runs on it) can build the same bundle:
    ``python -c "from tests.service.conftest import build_tiny_bundle as b; b(Path('/tmp/tiny'))"``.
    """
    import numpy as np
    import torch

    from export.onnx import export_bundle
    from models.roformer import RoFormerConfig, RoFormerEncoder
    from models.tasks import NerConfig, NerModel, SimilarityConfig, SimilarityModel
    from models.whitening import Whitening

    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    torch.manual_seed(0)
    cfg = RoFormerConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    ner = NerModel(
        RoFormerEncoder(cfg), NerConfig(labels=LABELS, head="gp", head_size=16, max_length=64, stride=32)
    )
    ner.eval().save(root / "ner", tokenizer_from=root / "vocab.txt")
    identity = Whitening(np.zeros(cfg.hidden_size), np.eye(cfg.hidden_size))  # mu = 0, W = I: y = x
    sim = SimilarityModel(RoFormerEncoder(cfg), SimilarityConfig(pooling="mean", max_length=32), identity)
    sim.eval().save(root / "sim", tokenizer_from=root / "vocab.txt")
    export_bundle(root / "tiny", ner=root / "ner", similarity=root / "sim", precisions=("fp32",), name="tiny")
    return root / "tiny"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="building the test bundle needs the train extra")
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="session")
def engine(tiny_bundle):
    """The engine, loaded directly (the reference for 'same as one by one' comparisons)."""
    from service.core import Engine

    return Engine.load(tiny_bundle, provider="cpu")


def wait_ready(base: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/ready")
        if r.status_code == 200:
            return
        assert "failed" not in r.json()["error"], r.json()
        time.sleep(0.02)
    raise AssertionError(f"{base} not ready after {timeout}s")


@contextmanager
def running(settings=None, engine=None, *, ready: bool = True) -> Iterator[str]:
    from service.http import create_app

    with serve(create_app(settings, engine=engine)) as base:
        if ready:
            wait_ready(base)
        yield base


def settings(**kw):
    from service.settings import Settings

    return Settings.from_env(environ={}, **kw)


@pytest.fixture(scope="session")
def server(tiny_bundle) -> Iterator[str]:
    """The tiny bundle behind the default settings (the engine loaded by the app's lifespan)."""
    with running(settings(bundle=tiny_bundle, max_wait_ms=5)) as base:
        yield base


@pytest.fixture(scope="session")
def ray_cluster():
    """A real one-node Ray cluster for the session (Ray has no local mode), sized for a 2-core CI
    machine; skipped when Ray is not installed. Joined by ``--ray`` runs in this process, and by
    ``--ray ADDRESS`` (``ray_cluster.get_runtime_context().gcs_address``) from a subprocess. Its own
    cluster (``address="local"``), never another one running on the machine."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'ropenlp[ray]'")
    for attempt in range(3):  # Ray waits 30 s (fixed) for its raylet: a machine busy with others may need another go
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=400 << 20,
                     logging_level="warning", log_to_driver=False)  # fmt: skip
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()
