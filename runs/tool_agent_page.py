"""The chat page (`minimind serve`'s /) with the trained calculator agent, in a real browser: the built-in tools
switched on, greedy, one English and one Chinese held-out question; the page must show each call with the tool's
result and a final answer holding that result. Writes OUT/chat.png and prints what the page showed.

    python runs/tool_agent_page.py OUT http://127.0.0.1:PORT

Needs selenium and Debian's chromium and chromium-driver; exits 0 saying so when they are missing."""

import shutil
import sys
import time
from pathlib import Path

from minimind.data.tooluse import eval_questions


def main(out: Path, url: str) -> int:
    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
    except ImportError:
        chromium = None
    if not (chromium and driver_path):
        print("page check skipped: needs selenium, chromium and chromium-driver")
        return 0
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,800"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    questions = [q for q in eval_questions(20) if q["phrasing"] == "unseen"][:2]  # one English, one Chinese
    try:
        browser.get(url + "/")
        for field, value in (("temperature", "0"), ("max_tokens", "64")):
            browser.find_element(By.ID, field).clear()
            browser.find_element(By.ID, field).send_keys(value)
        browser.find_element(By.ID, "tools").click()
        ok = True
        for n, q in enumerate(questions, 1):
            browser.find_element(By.ID, "input").send_keys(q["question"], Keys.ENTER)
            deadline = time.time() + 120
            while time.time() < deadline:
                answers = browser.find_elements(By.CSS_SELECTOR, ".assistant > div:first-child")
                if len(answers) >= n and browser.find_element(By.ID, "stop").get_attribute("hidden") is not None:
                    break
                time.sleep(0.2)
            tools = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".tool")]
            answer = browser.find_elements(By.CSS_SELECTOR, ".assistant > div:first-child")[-1].text
            shown = tools[-1] if tools else "(no tool call)"
            right = bool(tools) and tools[-1].endswith("= " + q["answer"]) and q["answer"] in answer
            ok &= right
            print(f"page: {q['question']!r} -> {shown} -> {answer!r} ({'right' if right else 'WRONG'}; "
                  f"expected {q['answer']})")
        browser.save_screenshot(str(out / "chat.png"))
        print(f"page: screenshot {out / 'chat.png'}")
        return 0 if ok else 1
    finally:
        browser.quit()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
