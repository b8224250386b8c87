"""The demo page in headless Chromium: it draws exactly what the API answered.

Every test asks the API itself for the expected answer (with httpx) and compares it with what it
reads back from the page's DOM, so the same tests hold against the stub and against the real app.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import DemoServer

pytest.importorskip("selenium", reason="selenium is in the dev extra")
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SENTENCE = "北京大学的张三去了上海，在中国人民银行见到了李四。"

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


def api(server: DemoServer, path: str, body: dict) -> httpx.Response:
    headers = {"authorization": f"Bearer {server.api_key}"} if server.api_key else {}
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
    body = {"texts": [text]} | ({} if threshold is None else {"threshold": threshold})
    response = api(server, "ner", body)
    assert response.status_code == 200, response.text
    return sorted((e["start"], e["end"], e["label"], e["text"], f"{e['score']:.2f}")
                  for e in response.json()["results"][0]["entities"])


def drawn_entities(driver, text: str) -> list[tuple]:
    drawn = driver.execute_script(READ_ENTITIES_JS)
    assert drawn["plain"] == text, "the drawn text must be the submitted text, character for character"
    for chip in drawn["chips"]:
        assert chip["visible"] and not chip["gap"], chip
    return sorted((c["start"], c["end"], c["label"], c["text"], c["score"]) for c in drawn["chips"])


def test_typed_sentence_shows_every_entity_with_nested_pair(browser, demo_server):
    open_page(browser, demo_server)
    box = browser.find_element(By.ID, "ner-text")
    box.clear()
    box.send_keys(SENTENCE)
    assert submit(browser, "ner-form", keyboard_from="ner-text") == "done"

    expected = expected_entities(demo_server, SENTENCE)
    assert drawn_entities(browser, SENTENCE) == expected
    nested = [(inner, outer) for inner in expected for outer in expected
              if inner != outer and outer[0] <= inner[0] and inner[1] <= outer[1]]
    assert nested, "the answer for this sentence should hold a nested pair"

    # Both members of a nested pair are readable at once: separate chips that do not overlap,
    # and two underlines at different heights under the shared characters.
    inner, outer = nested[0]
    rects = browser.execute_script("""
        const chip = (label, score) => Array.from(document.querySelectorAll('#ner-result .chip'))
          .find(c => c.dataset.label === label && c.querySelector('.chip-score').textContent === score);
        return [chip(arguments[0], arguments[1]), chip(arguments[2], arguments[3])]
          .map(c => c.getBoundingClientRect().toJSON());""", inner[2], inner[4], outer[2], outer[4])
    a, b = rects
    assert a["right"] <= b["left"] or b["right"] <= a["left"] or a["bottom"] <= b["top"] \
        or b["bottom"] <= a["top"], rects
    layers = browser.execute_script("""
        const seg = Array.from(document.querySelectorAll('#ner-result .seg.ent'))
          .find(s => s.dataset.ents.split(' ').length >= 2);
        const style = getComputedStyle(seg);
        return [style.backgroundImage.split('linear-gradient').length - 1, style.backgroundPositionY];""")
    assert layers[0] >= 2 and len(set(layers[1].split(", "))) >= 2, layers

    # Legend: one entry per label, same colour as the chips; table: one row per entity.
    legend = {li.get_attribute("data-label"): li.find_element(By.CLASS_NAME, "chip")
              .value_of_css_property("background-color")
              for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")}
    for chip in browser.find_elements(By.CSS_SELECTOR, "#ner-result .chip"):
        assert legend[chip.get_attribute("data-label")] == chip.value_of_css_property("background-color")
    browser.find_element(By.CSS_SELECTOR, "#ner-table-box summary").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#ner-table tbody tr")
    assert sorted((int(r.find_element(By.CSS_SELECTOR, "td:nth-child(3)").text.split("–")[0]),
                   r.find_element(By.CSS_SELECTOR, "td:nth-child(2)").text) for r in rows) \
        == sorted((e[0], e[3]) for e in expected)
    assert f"{len(expected)} entities" in browser.find_element(By.ID, "ner-status").text


def test_emoji_before_entities_does_not_shift_highlights(browser, demo_server):
    text = "🙂👍🏽 北京大学🎓的张三\n去了上海。"
    open_page(browser, demo_server)
    paste(browser, "ner-text", text)
    assert submit(browser, "ner-form") == "done"
    expected = expected_entities(demo_server, text)
    assert expected and drawn_entities(browser, text) == expected


def test_chips_are_reachable_by_keyboard_and_highlight_their_span(browser, demo_server):
    open_page(browser, demo_server)
    assert submit(browser, "ner-form", keyboard_from="ner-text") == "done"
    browser.find_element(By.ID, "ner-submit").send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert "chip" in active.get_attribute("class").split(), active.get_attribute("outerHTML")
    ent = active.get_attribute("data-ent")
    lit = browser.find_elements(By.CSS_SELECTOR, "#ner-result .seg.hl")
    assert lit and all(ent in s.get_attribute("data-ents").split() for s in lit)


def test_no_entities_says_so(browser, demo_server):
    open_page(browser, demo_server)
    paste(browser, "ner-text", "今天天气很好，我们去散步吧。")
    paste(browser, "ner-threshold", "1000")
    assert submit(browser, "ner-form") == "done"
    assert expected_entities(demo_server, "今天天气很好，我们去散步吧。", threshold=1000) == []
    assert "No entities found" in browser.find_element(By.ID, "ner-status").text
    assert browser.find_elements(By.CSS_SELECTOR, "#ner-result .chip") == []
    assert not browser.find_element(By.ID, "ner-table-box").is_displayed()


def test_api_error_is_shown_readably(browser, demo_server):
    response = api(demo_server, "ner", {"texts": [demo_server.too_long_text]})
    assert response.status_code == 413
    body = response.json()
    open_page(browser, demo_server)
    paste(browser, "ner-text", demo_server.too_long_text)
    assert submit(browser, "ner-form") == "error"
    box = browser.find_element(By.ID, "ner-error")
    assert box.is_displayed() and box.get_attribute("role") == "alert"
    shown = box.text
    assert "Error 413" in shown and body["error"] in shown and body["error_type"] in shown
    for key in ("field", "limit"):
        if key in body:
            assert f"{key}\n{body[key]}" in shown, shown


def test_api_key_is_sent_as_bearer_and_kept_in_session_storage_only(browser, demo_server):
    if not demo_server.api_key:
        pytest.skip("this server runs without an API key")
    open_page(browser, demo_server, with_key=False)
    assert submit(browser, "ner-form") == "error"
    error = browser.find_element(By.ID, "ner-error").text
    assert "Error 401" in error and "API key" in error

    browser.find_element(By.ID, "api-key").send_keys(demo_server.api_key)
    assert submit(browser, "ner-form") == "done"
    if demo_server.seen_headers is not None:
        assert demo_server.seen_headers[-1]["authorization"] == f"Bearer {demo_server.api_key}"
    storage = "return [sessionStorage.getItem('ropenlp.apiKey'), localStorage.length]"
    assert browser.execute_script(storage) == [None, 0]

    browser.find_element(By.ID, "remember-key").click()
    assert browser.execute_script(storage) == [demo_server.api_key, 0]
    browser.refresh()
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.ID, "api-key").get_attribute("value") == demo_server.api_key)
    browser.find_element(By.ID, "remember-key").click()
    assert browser.execute_script(storage) == [None, 0]


def test_similarity_ranks_candidates_with_bars(browser, demo_server):
    query, candidates = "今天天气怎么样", ["明天会下雨吗", "今天的天气如何", "我想去北京大学", "今天天气好不好"]
    open_page(browser, demo_server)
    paste(browser, "sim-query", query)
    paste(browser, "sim-candidates", "\n".join(candidates) + "\n\n")
    assert submit(browser, "sim-form") == "done"

    response = api(demo_server, "similarity", {"query": query, "candidates": candidates})
    expected = sorted(response.json()["results"], key=lambda r: -r["score"])
    rows = browser.execute_script("""
        return Array.from(document.querySelectorAll('#sim-result li')).map(li => ({
          text: li.querySelector('.cand').textContent, score: li.querySelector('.score').textContent,
          index: Number(li.dataset.index),
          bar: li.querySelector('.bar-fill').getBoundingClientRect().width}));""")
    assert [(r["text"], r["score"], r["index"]) for r in rows] == \
        [(r["text"], f"{r['score']:.2f}", r["index"]) for r in expected]
    bars = [r["bar"] for r in rows]
    assert bars == sorted(bars, reverse=True) and bars[0] > bars[-1]


def test_long_text_wraps_and_scrolls_without_horizontal_overflow(browser, demo_server):
    chunk = "北京大学的张三去了上海，在中国人民银行见到了李四。"
    text = (chunk * 60)[:1400] + "\n" + "x" * 300 + "\n\n" + (chunk * 60)[:1297]
    assert len(text) == 3000
    open_page(browser, demo_server)
    paste(browser, "ner-text", text)
    assert submit(browser, "ner-form") == "done"
    assert drawn_entities(browser, text) == expected_entities(demo_server, text)
    sizes = browser.execute_script("""
        const page = document.documentElement, box = document.getElementById('ner-result');
        return {page: [page.scrollWidth, page.clientWidth], box: [box.scrollWidth, box.clientWidth],
                boxHeight: [box.scrollHeight, box.clientHeight]};""")
    assert sizes["page"][0] <= sizes["page"][1], sizes
    assert sizes["box"][0] <= sizes["box"][1], sizes
    assert sizes["boxHeight"][0] > sizes["boxHeight"][1], "a long text scrolls inside its box"


def test_nothing_is_fetched_from_elsewhere_and_the_console_stays_clean(browser, demo_server):
    browser.get_log("browser")  # drop what earlier tests left
    open_page(browser, demo_server)
    assert submit(browser, "ner-form") == "done"
    assert submit(browser, "sim-form") == "done"
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(r => new URL(r.name).origin)")
    assert origins and set(origins) == {demo_server.base_url.rstrip("/")}
    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == []  # a script error or a Content-Security-Policy violation would show here


def test_screenshot(browser, demo_server):
    """Draws the page in a typical state into test-artifacts/demo.png (docs/demo.png on request)."""
    open_page(browser, demo_server)
    paste(browser, "ner-text", SENTENCE + "李四说，北京大学和中国人民银行下周在上海签约。")
    assert submit(browser, "ner-form") == "done"
    assert submit(browser, "sim-form") == "done"
    # Grow the window until the whole page fits the viewport (the window frame takes some height).
    for _ in range(3):
        page, view = browser.execute_script(
            "return [document.documentElement.scrollHeight, window.innerHeight]")
        if page <= view:
            break
        browser.set_window_size(1200, browser.get_window_size()["height"] + page - view)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo.png"
    browser.save_screenshot(str(shot))
    browser.set_window_size(1200, 1000)
    assert shot.stat().st_size > 10_000
    if os.environ.get("ROPENLP_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, REPO / "docs" / "demo.png")
