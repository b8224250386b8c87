"""Fixtures for the demo page: an app served by uvicorn on 127.0.0.1 in a thread, headless Chromium.

`demo_server` yields where the page lives and how to talk to its API (`tests.servers.serve`). It
serves the stub API (`stub_api.py`) today; to run the same tests against the real service, add a
parameter that builds `service.http.create_app(...)` with an API key and a small bundle and yields a
`DemoServer` for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import serve

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
def demo_server() -> Iterator[DemoServer]:
    from tests.e2e.stub_api import MAX_CHARS, create_stub_app

    app, seen = create_stub_app(api_key=API_KEY)
    with serve(app) as base_url:
        yield DemoServer(base_url + "/", API_KEY, "北" * (MAX_CHARS + 1), seen)


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
