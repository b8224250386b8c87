"""Real HTTP servers for tests on 127.0.0.1: uvicorn in a thread (:func:`serve`), or ``ropenlp serve`` in
a process of its own (:func:`server_process`: signals, exit status, a model that hangs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def serve(app) -> Iterator[str]:
    """Run an ASGI app with uvicorn (lifespan on) in a daemon thread; yield its base URL
    (``http://127.0.0.1:PORT``, no trailing slash); shut it down cleanly after the block."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    base: str  # http://127.0.0.1:PORT
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def server_process(
    argv: Sequence[str], log: Path, *, env: Mapping[str, str] = (), ready_timeout: float = 120.0
) -> Iterator[ServerProcess]:
    """Run ``python ARGV...`` (e.g. ``-m ropenlp serve --bundle B``) in the repository root with
    ``ROPENLP_HOST=127.0.0.1``, a free ``ROPENLP_PORT`` and ``env``; yield it once ``/ready`` answers
    200 (stdout and stderr go to ``log``); kill it after the block if it still runs."""
    port = free_port()
    environ = {**os.environ, "ROPENLP_HOST": "127.0.0.1", "ROPENLP_PORT": str(port), "ROPENLP_LOG_LEVEL": "warning",
               **dict(env)}  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout} s:\n{server.output()}")
            try:
                if httpx.get(server.base + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
