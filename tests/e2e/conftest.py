"""Fixtures for the demo page: an app served by uvicorn on 127.0.0.1 in a thread, headless Chromium.

Two servers, each yielding a `DemoServer` (where the page lives and how to talk to its API,
`tests.servers.serve`):

* `stub_server`: the stub API (`stub_api.py`): fixed answers, a guaranteed nested pair, and the
  headers of every request it saw;
* `real_server`: the real app (`service.http.create_app`) on the shipped default bundle
  (`service/bundles/default`, CLUENER's 10 flat types + similarity), with an API key.

`demo_server` is both in turn (ids `stub` and `real`): a test that takes it must hold against any
API that answers in the documented shapes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import serve

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / "service" / "bundles" / "default"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1200,1000", "--force-device-scale-factor=1",
]
API_KEY = "test-key-0123456789"


@dataclass
class DemoServer:
    base_url: str  # ends with "/"
    api_key: str | None
    too_long_text: str  # a text the API rejects with 413
    seen_headers: list[dict[str, str]] | None = field(default=None)  # stub only: every API request


@pytest.fixture(scope="module")
def stub_server() -> Iterator[DemoServer]:
    from tests.e2e.stub_api import MAX_CHARS, create_stub_app

    app, seen = create_stub_app(api_key=API_KEY)
    with serve(app) as base_url:
        yield DemoServer(base_url + "/", API_KEY, "北" * (MAX_CHARS + 1), seen)


@pytest.fixture(scope="module")
def real_server() -> Iterator[DemoServer]:
    """The real app on the shipped default bundle, with an API key; yielded once `/ready` says so."""
    import httpx

    from service.http import create_app
    from service.settings import Settings

    # CPU: the answers (and the README screenshot) do not depend on the machine having a GPU.
    settings = Settings(bundle=DEFAULT_BUNDLE, api_key=API_KEY, provider="cpu")
    with serve(create_app(settings)) as base_url:
        deadline = time.monotonic() + 60
        while (ready := httpx.get(base_url + "/ready", timeout=10)).status_code != 200:
            assert ready.status_code == 503 and time.monotonic() < deadline, ready.text
            time.sleep(0.05)
        max_chars = httpx.get(base_url + "/info", timeout=10).json()["limits"]["max_chars"]
        assert max_chars == settings.max_chars
        yield DemoServer(base_url + "/", API_KEY, "北" * (max_chars + 1))


@pytest.fixture(scope="module", params=["stub", "real"])
def demo_server(request) -> DemoServer:
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium through its own chromedriver; nothing is downloaded."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"browser tests need Debian's chromium and chromium-driver packages "
                    f"(missing {', '.join(missing)}; apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager must never download
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP violations
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path_factory.getbasetemp())
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(15)
    driver.set_script_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
