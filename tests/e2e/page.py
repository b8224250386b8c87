"""Driving the demo page and reading it back: shared by the stub and real-app browser tests.

Every check asks the API itself for the expected answer (with httpx) and compares it with what it
reads back from the page's DOM, so the same helpers hold against the stub and against the real app.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.conftest import DemoServer

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

# Reads the entities back from the drawn text: each chip names an entity; the text segments that
# carry the entity's id give its characters; offsets are counted in code points, as the API does.
READ_ENTITIES_JS = """
const root = document.getElementById('ner-result');
const found = new Map();
let at = 0, plain = '';
for (const seg of root.querySelectorAll('.seg')) {
  if (seg.classList.contains('chip-holder')) continue;
  const n = Array.from(seg.textContent).length;
  for (const id of (seg.dataset.ents || '').split(' ').filter(Boolean)) {
    const e = found.get(id) || {start: at, end: at, text: '', pieces: 0};
    if (e.end !== at) e.gap = true;
    e.end = at + n; e.text += seg.textContent; e.pieces += 1;
    found.set(id, e);
  }
  at += n; plain += seg.textContent;
}
const chips = Array.from(root.querySelectorAll('.chip[data-ent]')).map(c => {
  const e = found.get(c.dataset.ent) || {};
  return {label: c.querySelector('.chip-label').textContent,
          score: c.querySelector('.chip-score').textContent, start: e.start, end: e.end, text: e.text, gap: !!e.gap, visible: c.getClientRects().length > 0};
});
return {plain, chips};
"""

READ_RANKING_JS = """
return Array.from(document.querySelectorAll('#sim-result li')).map(li => ({
  text: li.querySelector('.cand').textContent, score: li.querySelector('.score').textContent,
  index: Number(li.dataset.index),
  bar: li.querySelector('.bar-fill').getBoundingClientRect().width}));
"""


def api(server: DemoServer, path: str, body: dict, *, with_key: bool = True) -> httpx.Response:
    headers = {"authorization": f"Bearer {server.api_key}"} if server.api_key and with_key else {}
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=30)


def open_page(driver, server: DemoServer, *, with_key: bool = True) -> None:
    driver.get(server.base_url)
    driver.execute_script("sessionStorage.clear(); localStorage.clear();")
    WebDriverWait(driver, 10).until(
        lambda d: d.find_element(By.ID, "model-info").text != "Loading model information…")
    if with_key and server.api_key:
        driver.find_element(By.ID, "api-key").send_keys(server.api_key)


def paste(driver, element_id: str, value: str) -> None:
    """Set a field's value as a paste would (send_keys cannot type characters beyond the BMP)."""
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input', {bubbles: true}));", element_id, value)


def submit(driver, form_id: str, *, keyboard_from: str | None = None) -> str:
    """Submit a form (click, or Ctrl+Enter in a field) and wait for its answer: 'done' or 'error'."""
    form = driver.find_element(By.ID, form_id)
    driver.execute_script("arguments[0].dataset.state = ''", form)
    if keyboard_from:
        driver.find_element(By.ID, keyboard_from).send_keys(Keys.CONTROL, Keys.ENTER)
    else:
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 20).until(lambda d: form.get_attribute("data-state") in ("done", "error"))
    return form.get_attribute("data-state")


def expected_entities(server: DemoServer, text: str, threshold: float | None = None) -> list[tuple]:
    """The API's entities for ``text`` as sorted (start, end, label, text, score as drawn) tuples."""
    body = {"texts": [text]} | ({} if threshold is None else {"threshold": threshold})
    response = api(server, "ner", body)
    assert response.status_code == 200, response.text
    return sorted((e["start"], e["end"], e["label"], e["text"], f"{e['score']:.2f}")
                  for e in response.json()["results"][0]["entities"])


def drawn_entities(driver, text: str) -> list[tuple]:
    """The entities the page drew, in the same form as :func:`expected_entities`."""
    drawn = driver.execute_script(READ_ENTITIES_JS)
    assert drawn["plain"] == text, "the drawn text must be the submitted text, character for character"
    for chip in drawn["chips"]:
        assert chip["visible"] and not chip["gap"], chip
    return sorted((c["start"], c["end"], c["label"], c["text"], c["score"]) for c in drawn["chips"])


def check_legend_and_table(driver, expected: list[tuple]) -> None:
    """Legend: one entry per label, same colour as the chips; table: one row per entity; status count."""
    legend = {li.get_attribute("data-label"): li.find_element(By.CLASS_NAME, "chip")
              .value_of_css_property("background-color")
              for li in driver.find_elements(By.CSS_SELECTOR, "#legend li")}
    for chip in driver.find_elements(By.CSS_SELECTOR, "#ner-result .chip"):
        assert legend[chip.get_attribute("data-label")] == chip.value_of_css_property("background-color")
    driver.find_element(By.CSS_SELECTOR, "#ner-table-box summary").click()
    WebDriverWait(driver, 5).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ner-table tbody tr")) == len(expected))
    rows = [[td.text for td in r.find_elements(By.TAG_NAME, "td")]
            for r in driver.find_elements(By.CSS_SELECTOR, "#ner-table tbody tr")]
    assert sorted((int(chars.split("–")[0]), int(chars.split("–")[1]), label, text, score)
                  for label, text, chars, score, _source in rows) == expected
    driver.find_element(By.CSS_SELECTOR, "#ner-table-box summary").click()  # fold it again
    assert f"{len(expected)} entities" in driver.find_element(By.ID, "ner-status").text


def expected_ranking(server: DemoServer, query: str, candidates: list[str]) -> list[tuple]:
    """The API's ranking as (text, score as drawn, index) tuples, best first."""
    response = api(server, "similarity", {"query": query, "candidates": candidates})
    assert response.status_code == 200, response.text
    ranked = sorted(response.json()["results"], key=lambda r: -r["score"])
    return [(r["text"], f"{r['score']:.2f}", r["index"]) for r in ranked]


def drawn_ranking(driver) -> list[tuple]:
    """The ranking the page drew, best first; its bars shrink down the list."""
    rows = driver.execute_script(READ_RANKING_JS)
    bars = [r["bar"] for r in rows]
    assert bars == sorted(bars, reverse=True) and bars[0] > bars[-1], bars
    return [(r["text"], r["score"], r["index"]) for r in rows]


def save_screenshot(driver, name: str = "demo.png") -> Path:
    """The whole page into test-artifacts/NAME; with ROPENLP_UPDATE_DOCS_SCREENSHOT=1 also docs/NAME."""
    # Grow the window until the whole page fits the viewport (the window frame takes some height).
    width = driver.get_window_size()["width"]
    for _ in range(3):
        page, view = driver.execute_script(
            "return [document.documentElement.scrollHeight, window.innerHeight]")
        if page <= view:
            break
        driver.set_window_size(width, driver.get_window_size()["height"] + page - view)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    try:
        driver.save_screenshot(str(shot))
    finally:
        driver.set_window_size(1200, 1000)
    assert shot.stat().st_size > 10_000
    if os.environ.get("ROPENLP_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, REPO / "docs" / name)
    return shot
