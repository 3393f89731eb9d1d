"""The web chat page in a real headless Chromium: type a message, see the streamed reply rendered."""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from memorized_model import CAPITAL_QUESTION
from test_serve_server import live_server


def _chromium() -> webdriver.Chrome:
    """Debian's chromium and chromium-driver (apt), never a downloaded browser."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert browser and driver, "install Debian's chromium and chromium-driver (see .ci/run)"
    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_chat_page_streams_a_markdown_reply(memorized, serve_tokenizer):
    with live_server(memorized, serve_tokenizer) as (url, _):
        browser = _chromium()
        try:
            browser.get(url + "/")
            WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "model-name").text == "memorized")
            browser.execute_script("document.getElementById('temperature').value = '0'")  # greedy: a known reply
            browser.find_element(By.ID, "input").send_keys(CAPITAL_QUESTION[0]["content"])
            browser.find_element(By.ID, "send").click()
            WebDriverWait(browser, 120).until(  # the send button comes back when the stream has ended
                lambda b: b.find_element(By.ID, "send").is_enabled() and b.find_elements(By.CSS_SELECTOR, ".message.assistant p"))
            reply = browser.find_element(By.CSS_SELECTOR, ".message.assistant")
            assert reply.find_element(By.TAG_NAME, "strong").text == "Paris"
            assert reply.find_element(By.CSS_SELECTOR, "pre code").text == "print('Paris')"
            assert reply.text.startswith("The capital of France is Paris.")
            assert browser.find_element(By.CSS_SELECTOR, ".message.user").text == CAPITAL_QUESTION[0]["content"]
            errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
            assert errors == []
        finally:
            browser.quit()
