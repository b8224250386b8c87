"""The demo page on the real app (the shipped default bundle): a real sentence, and the README screenshot.

The page must draw exactly what `POST /ner` and `POST /similarity` answered, asked for the same
texts with httpx. The generic page tests (errors, the API key, emoji offsets, long texts, the
ranking) run against the real app too, through `demo_server` in test_demo_page.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("selenium", reason="selenium is in the dev extra")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.page import (
    api,
    check_legend_and_table,
    drawn_entities,
    drawn_ranking,
    expected_entities,
    expected_ranking,
    open_page,
    paste,
    save_screenshot,
    submit,
)

SENTENCE = "张伟在北京大学读书，他的父亲在中国人民银行工作。《三体》是刘慈欣创作的长篇科幻小说。周杰伦在台北举办了演唱会。"
QUERY = "今天天气怎么样"
CANDIDATES = ["明天会下雨吗", "今天的天气如何", "我想去北京大学", "今天天气好不好"]
PARAPHRASE = "今天的天气如何"


def test_real_sentence_is_drawn_exactly_as_the_api_answered(browser, real_server):
    open_page(browser, real_server)
    box = browser.find_element(By.ID, "ner-text")
    box.clear()
    box.send_keys(SENTENCE)
    assert submit(browser, "ner-form", keyboard_from="ner-text") == "done"

    expected = expected_entities(real_server, SENTENCE)
    assert expected, "the default bundle finds nothing in an obvious sentence"
    assert {"张伟", "刘慈欣", "周杰伦"} <= {e[3] for e in expected if e[2] == "name"}, expected
    assert drawn_entities(browser, SENTENCE) == expected
    check_legend_and_table(browser, expected)
    info = browser.find_element(By.ID, "model-info").text
    assert "ropenlp-default" in info and "10 labels" in info, info


def test_lexicon_box_adds_and_blocks(browser, real_server):
    """The lexicon box sends its lines as the request's lexicon: the page draws the lexicon's entity,
    says its source in the table, and no longer draws the blocked one."""
    lexicon = [{"term": "三体", "label": "product", "action": "add"}, {"term": "周杰伦", "label": "*", "action": "block"}]
    open_page(browser, real_server)
    paste(browser, "ner-text", SENTENCE)
    paste(browser, "ner-lexicon", "三体 product\n周杰伦\t*\tblock")
    assert submit(browser, "ner-form") == "done"
    answer = api(real_server, "ner", {"texts": [SENTENCE], "lexicon": lexicon}).json()
    expected = sorted((e["start"], e["end"], e["label"], e["text"], f"{e['score']:.2f}")
                      for e in answer["results"][0]["entities"])
    drawn = drawn_entities(browser, SENTENCE)
    assert [d[:4] for d in drawn] == [e[:4] for e in expected]
    assert ("三体", "product") in {(d[3], d[2]) for d in drawn} and "周杰伦" not in {d[3] for d in drawn}
    browser.find_element(By.CSS_SELECTOR, "#ner-table-box summary").click()
    # the rows are built on the details' toggle event, which fires after the click returns
    WebDriverWait(browser, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ner-table tbody tr"))
    sources = {r.find_elements(By.TAG_NAME, "td")[1].text: r.find_elements(By.TAG_NAME, "td")[4].text
               for r in browser.find_elements(By.CSS_SELECTOR, "#ner-table tbody tr")}
    assert sources["三体"] == "lexicon" and sources["张伟"] == "model"
    paste(browser, "ner-lexicon", "only-a-term")
    assert submit(browser, "ner-form") == "error"
    assert "lexicon line 1" in browser.find_element(By.ID, "ner-error").text


def test_screenshot(browser, real_server):
    """The README picture from the real app: test-artifacts/demo.png, and docs/demo.png with
    ROPENLP_UPDATE_DOCS_SCREENSHOT=1. What it shows is checked against the API first."""
    open_page(browser, real_server)
    paste(browser, "ner-text", SENTENCE)
    assert submit(browser, "ner-form") == "done"
    assert drawn_entities(browser, SENTENCE) == expected_entities(real_server, SENTENCE)
    paste(browser, "sim-query", QUERY)
    paste(browser, "sim-candidates", "\n".join(CANDIDATES))
    assert submit(browser, "sim-form") == "done"
    ranking = drawn_ranking(browser)
    assert ranking == expected_ranking(real_server, QUERY, CANDIDATES) and ranking[0][0] == PARAPHRASE
    browser.execute_script("document.activeElement.blur()")  # no focus ring in the picture
    shot = save_screenshot(browser)
    assert shot.stat().st_size < 300_000, "docs/demo.png ships in the repository"
