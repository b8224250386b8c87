"""``ropenlp serve`` as a user runs it, settings from the environment, and the no-torch rule."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.settings import Settings, SettingsError, available_cores

REPO = Path(__file__).resolve().parents[2]


def test_service_never_imports_torch() -> None:
    code = (
        "import service, service.http, service.core, service.runtime, service.cli, service.batching; "
        "import sys; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_settings_from_env_and_flags() -> None:
    env = {
        "ROPENLP_BATCH_TOKENS": "4096",
        "ROPENLP_API_KEY": "k",
        "ROPENLP_PROVIDER": "cpu",
        "ROPENLP_PORT": " ",
    }
    s = Settings.from_env(env, port=9000, max_wait_ms=None)
    assert (s.batch_tokens, s.provider, s.port, s.max_wait_ms) == (4096, "cpu", 9000, 2.0)
    assert s.api_key.get_secret_value() == "k" and s.public()["api_key"] == "***"
    assert Settings.from_env(env, batch_tokens=100).batch_tokens == 100  # a flag wins
    with pytest.raises(SettingsError, match="ROPENLP_MAX_QUEUE"):
        Settings.from_env({"ROPENLP_MAX_QUEUE": "lots"})
    with pytest.raises(SettingsError, match="provider"):
        Settings.from_env({}, provider="tpu")
    with pytest.raises(SettingsError, match="ner_stride"):
        Settings.from_env({}, ner_max_length=10, ner_stride=9)


def test_inference_workers_default_to_one_per_core(tmp_path, monkeypatch) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert available_cores(cpu_max) == len(os.sched_getaffinity(0))  # no quota: the affinity
    cpu_max.write_text("150000 100000\n")
    assert available_cores(cpu_max) == 1  # docker --cpus 1.5: one whole core
    assert available_cores(tmp_path / "missing") == len(os.sched_getaffinity(0))
    monkeypatch.setattr("service.settings.available_cores", lambda: 4)
    assert Settings.from_env({}).workers == 4  # 0: one per core, one intra-op thread each
    assert Settings.from_env({}, intra_op_threads=2).workers == 2
    assert Settings.from_env({}, intra_op_threads=8).workers == 1
    assert Settings.from_env({}, intra_op_threads=0).workers == 1  # ONNX Runtime takes every core
    assert Settings.from_env({"ROPENLP_INFERENCE_WORKERS": "3"}).workers == 3


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPENLP_")}
    return env | {"PYTHONPATH": str(REPO)}


def test_serve_with_a_missing_bundle_says_so() -> None:
    p = subprocess.run([sys.executable, "-m", "ropenlp", "serve", "--bundle", "/nonexistent/bundle"], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert p.returncode == 2
    assert "bundle directory /nonexistent/bundle does not exist" in p.stderr and "Traceback" not in p.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready after {seconds} s"
        time.sleep(0.05)


def test_serve_without_arguments_serves_the_default_bundle() -> None:
    port = _free_port()
    env = _env() | {"ROPENLP_PORT": str(port)}  # the only setting: everything else is the default
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ropenlp", "serve"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_ready(proc, port)
        started = time.perf_counter() - t0
        info = httpx.get(f"http://127.0.0.1:{port}/info").json()
        assert info["name"] == "ropenlp-default-small"
        r = httpx.post(f"http://127.0.0.1:{port}/ner", json={"texts": ["周杰伦在台北举办了演唱会。"]})
        assert {(e["text"], e["label"]) for e in r.json()["results"][0]["entities"]} >= {("周杰伦", "name")}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    print(f"\nropenlp serve: ready {started * 1e3:.0f} ms after launch (default bundle)")


def test_serve_starts_answers_and_stops(tiny_bundle) -> None:
    port = _free_port()
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "ropenlp", "serve", "--bundle", str(tiny_bundle), "--port", str(port),
           "--log-format", "json"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_ready(proc, port)
        started = time.perf_counter() - t0
        r = httpx.post(f"http://127.0.0.1:{port}/ner", json={"texts": ["北京"]})
        assert r.status_code == 200 and "x-total-time" in r.headers
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert '"logger": "ropenlp.access"' in err and '"route": "/ner"' in err  # JSON access log
    print(f"\nropenlp serve: ready {started * 1e3:.0f} ms after launch (tiny bundle)")


def test_a_shipped_bundle_by_name(tmp_path, monkeypatch) -> None:
    import service.settings as settings_module
    from service.cli import NoBundle, require_bundle

    (tmp_path / "medical").mkdir()
    (tmp_path / "medical" / "bundle.json").write_text("{}")
    (tmp_path / "notes").mkdir()  # no bundle.json: not a bundle
    monkeypatch.setattr(settings_module, "BUNDLES_DIR", tmp_path)
    assert settings_module.shipped_bundles() == ["medical"]
    monkeypatch.chdir(tmp_path / "notes")
    assert Settings(bundle=Path("medical")).bundle_dir == tmp_path / "medical"
    (tmp_path / "notes" / "medical").mkdir()  # a directory of that name wins over the shipped bundle
    assert Settings(bundle=Path("medical")).bundle_dir == Path("medical")
    with pytest.raises(NoBundle, match=r"bundle directory nope does not exist.*shipped with ropenlp \(medical\)"):
        require_bundle(Settings(bundle=Path("nope")))
