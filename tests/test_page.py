"""The web chat page (minimind/assets/chat.html) in a real browser: Debian's chromium driven by selenium against a
real `minimind serve` app. Two turns stream in, each with a tool call run through the server's built-in tools,
the first with its thinking collapsed under the answer; a message sent while an answer streams waits for it
instead of stopping it; no JavaScript error (and no 404, /favicon.ico included); a screenshot is written.
`.ci/run` installs chromium and chromium-driver; where they are missing the test is skipped, saying so."""

import shutil
import time

import pytest
from helpers import TOOL_ANSWER, TOOL_QUESTION, TOOL_REASONING, tool_model
from test_serve import http_call, start_server

from minimind.serve.app import create_app
from minimind.tokenizer import load_tokenizer

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                                                  "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def url():
    app = create_app(tool_model(), load_tokenizer(), model_name="tools", max_tokens_limit=256,
                     demo_tools=["calculator"])
    server, thread, url = start_server(app)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1100,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()


def wait_for(condition, what, browser, timeout=90):
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; the page shows:\n{browser.find_element(By.ID, 'log').text}"
                         f"\nbrowser log: {browser.get_log('browser')}")


def test_the_page_streams_two_turns_with_thinking_and_tool_calls(url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    status, kind, _ = http_call(url + "/favicon.ico")
    assert status == 200 and kind.startswith("image/")
    browser.get(url + "/")
    wait_for(lambda: browser.find_element(By.ID, "model").text == "tools", "the model's name", browser)
    for field, value in (("temperature", "0"), ("max_tokens", "60")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "tools").click()
    box = browser.find_element(By.ID, "input")
    box.send_keys(TOOL_QUESTION, Keys.ENTER)
    box.send_keys("What is 6 * 9?", Keys.ENTER)  # sent while the first answer streams: it waits, nothing stops

    def answers():
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".assistant > div:first-child")]
    wait_for(lambda: "6 * 9 = 54." in answers(), "the second turn's final answer", browser)
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".user")] == [TOOL_QUESTION, "What is 6 * 9?"]
    assert TOOL_ANSWER in answers()
    assert not browser.find_elements(By.CSS_SELECTOR, ".error")
    tools = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".tool")]
    assert tools == ['→ calculator({"expression": "12 * 7"}) = 84', '→ calculator({"expression": "6 * 9"}) = 54']
    (thinking,) = browser.find_elements(By.CSS_SELECTOR, "details.thinking")
    assert thinking.get_attribute("open") is None  # collapsed
    thinking.find_element(By.TAG_NAME, "summary").click()
    assert TOOL_REASONING in thinking.text
    assert browser.find_element(By.ID, "stop").get_attribute("hidden") is not None  # nothing streams any more
    shot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
