"""The playground and the traffic dashboard in a real browser: Debian's Chromium, driven by
Selenium through Debian's chromedriver (scripts/install-browser.sh), against `expertmesh serve`
on 127.0.0.1 with the shipped router and the embedded SmolLM2 expert.

Screenshots are kept as test artefacts in test-artifacts/ui/ (or $EXPERTMESH_TEST_ARTIFACTS/ui);
the README's come from there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from expertmesh.config import default_config_path
from tests.conftest import REPO, free_port
from tests.test_integration import MEDICAL_QUESTION, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.browser]

KEY = "sk-ui-test"
# The shipped router: code 0.55, math 0.37: under the threshold, and two experts reach top-p 0.8.
CROSS_DOMAIN = "What is the integral of x squared, and how would I code it in Python?"
LEGAL_FOLLOW_UP = "My employer fired me after I told them about my diagnosis. Can I sue them for wrongful termination?"
ARTIFACTS = Path(os.environ.get("EXPERTMESH_TEST_ARTIFACTS", REPO / "test-artifacts")) / "ui"
WAIT_S = 180  # one answer of the embedded model on a busy 2-core machine, with room to spare
LAPTOP, PHONE = (1280, 900), (390, 844)

# Every visible element with text of its own: its contrast against the background it sits on.
CONTRAST_JS = """
const channels = (c) => c.match(/[\\d.]+/g).map(Number);
const luminance = (c) => { const [r, g, b] = channels(c).slice(0, 3).map((v) => { v /= 255;
  return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
const background = (node) => { for (; node; node = node.parentElement) { const c = getComputedStyle(node).backgroundColor;
  const v = channels(c); if (v.length < 4 || v[3] > 0) return c; } return "rgb(255, 255, 255)"; };
const low = [];
for (const node of document.querySelectorAll("body *")) {
  if (!(node instanceof HTMLElement) || !node.offsetParent || node.disabled || node.closest("[disabled]")) continue;
  if (![...node.childNodes].some((child) => child.nodeType === 3 && child.textContent.trim())) continue;
  const [a, b] = [luminance(getComputedStyle(node).color), luminance(background(node))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) low.push(`${node.tagName}.${node.className} "${node.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
}
return low;
"""
# Form controls without an accessible name, buttons without text.
UNLABELLED_JS = """
return [...document.querySelectorAll("input, select, textarea, button")]
  .filter((c) => c.offsetParent && !(c.labels && c.labels.length) && !c.getAttribute("aria-label") && !c.textContent.trim())
  .map((c) => c.outerHTML.slice(0, 80));
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`expertmesh serve` on the default config, with a key and a decision log that keeps texts."""
    config = yaml.safe_load(default_config_path().read_text())
    folder = tmp_path_factory.mktemp("ui")
    port = free_port()
    config["gateway"].update(port=port, keys=[{"name": "ui-test", "key": KEY, "traffic": "all"}])
    config["log"] = {"url": f"sqlite:///{folder / 'decisions.db'}", "store_text": True}
    path = folder / "expertmesh.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "expertmesh.cli", "serve", "--config", str(path)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("Chromium or its driver is missing: run scripts/install-browser.sh (make install-test does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     f"--user-data-dir={profile}", f"--window-size={LAPTOP[0]},{LAPTOP[1]}"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_script_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(browser, condition, timeout_s: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout_s, poll_frequency=0.1).until(lambda _: condition())


def find(browser, selector: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector)


def find_all(browser, selector: str):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def screenshot(browser, name: str, size: tuple[int, int] = LAPTOP, full_height: bool = False) -> None:
    browser.set_window_size(*size)
    if full_height:  # twice: the first resize can change the layout's height
        for _ in range(2):
            # the window's height includes a few pixels of frame that the page does not get
            height = max(size[1], browser.execute_script("return document.documentElement.scrollHeight") + 120)
            browser.set_window_size(size[0], height)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    browser.set_window_size(*size)


def use_key(browser, key: str) -> None:
    field = find(browser, "#api-key")
    field.clear()
    field.send_keys(key)
    find(browser, "#key-form button").click()


def send(browser, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = find(browser, "#message")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)  # the keyboard path: Enter sends


def last_answer(browser, count: int):
    """The `count`-th assistant turn, once its stream has ended."""
    wait(browser, lambda: len(find_all(browser, "li.turn.assistant")) >= count)
    turn = find_all(browser, "li.turn.assistant")[count - 1]
    wait(browser, lambda: turn.get_attribute("data-state") in ("done", "failed"), WAIT_S)
    assert turn.get_attribute("data-state") == "done", turn.text
    return turn


def scores(browser) -> dict[str, float]:
    return {
        row.get_attribute("data-domain"): float(row.get_attribute("data-score"))
        for row in find_all(browser, "#scores li")
    }


def check_accessible(browser, page: str) -> None:
    assert browser.execute_script(UNLABELLED_JS) == [], f"{page}: controls without a label"
    assert browser.execute_script(CONTRAST_JS) == [], f"{page}: text under 4.5:1 contrast"
    assert browser.execute_script("return document.documentElement.lang") == "en"


def fits_width(browser) -> bool:
    return browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_a_conversation_in_the_playground_then_on_the_dashboard(served, browser):
    browser.get(f"{served}/ui")
    use_key(browser, KEY)
    wait(browser, lambda: find(browser, "#notice").text == "Key accepted.")
    assert [o.get_attribute("value") for o in find_all(browser, "#model option")][:2] == ["auto", "medical"]
    find(browser, "#max-tokens").clear()
    find(browser, "#max-tokens").send_keys("32")

    # A medical question: the answer streams in, and the medical bar is the highest.
    send(browser, MEDICAL_QUESTION)
    first = last_answer(browser, 1)
    assert int(first.get_attribute("data-chunks")) > 1, "the answer arrived in one piece, not streamed"
    assert first.find_element("css selector", ".text").text.strip()
    assert find(browser, "[data-testid=expert]").text == "medical" and first.get_attribute("data-expert") == "medical"
    by_domain = scores(browser)
    assert set(by_domain) == {"medical", "legal", "finance", "code", "math", "science", "general"}
    assert max(by_domain, key=by_domain.get) == "medical"
    assert find(browser, "#scores li.leading").get_attribute("data-domain") == "medical"
    assert "threshold" in find(browser, "#confidence-caption").text
    assert "first token" in find(browser, "#facts").text and "prompt" in find(browser, "#facts").text

    # A legal follow-up in the same conversation: the domain switches, and the page says so.
    send(browser, LEGAL_FOLLOW_UP)
    second = last_answer(browser, 2)
    assert second.get_attribute("data-domain") == "legal" and second.get_attribute("data-conversation") == "switched"
    assert "switched: medical \u2192 legal" in second.text
    assert find(browser, "[data-testid=conversation]").text == "domain switched"
    assert max(scores(browser), key=scores(browser).get) == "legal"
    check_accessible(browser, "playground")
    screenshot(browser, "playground")

    # A question across two domains, fanned out: each expert's own answer, then the combined one.
    find(browser, "#reset").click()
    find(browser, "#fanout").click()
    send(browser, CROSS_DOMAIN)
    combined = last_answer(browser, 1)
    assert combined.get_attribute("data-expert") == "fan-out" and "fan-out: code + math" in combined.text
    answers = {
        item.get_attribute("data-expert"): item.text for item in find_all(browser, "#fanout-answers li[data-expert]")
    }
    assert set(answers) == {"code", "math"} and all("answered" in text for text in answers.values()), answers
    assert len(find_all(browser, "#fanout-answers li[data-expert] .text")) == 2
    screenshot(browser, "playground-fanout")
    find(browser, "#fanout").click()

    # Route only: the decision follows the draft as it is typed; no expert is asked.
    find(browser, "#route-only").click()
    find(browser, "#message").send_keys("How do I reverse a linked list in Python?")
    wait(browser, lambda: "route only" in find(browser, "#decision-kind").text
         and find(browser, "[data-testid=expert]").text == "code")  # fmt: skip
    assert len(find_all(browser, "li.turn.assistant")) == 1
    browser.set_window_size(*PHONE)
    assert fits_width(browser), "the playground scrolls sideways at a phone's width"
    screenshot(browser, "playground-phone", PHONE)
    browser.set_window_size(*LAPTOP)

    # The dashboard counts those requests (the key is kept for the tab).
    browser.get(f"{served}/ui/traffic")
    wait(browser, lambda: find(browser, "#report").get_attribute("data-loaded") == "true")
    tiles = {
        t.get_attribute("data-testid"): t.find_element("css selector", ".value").text
        for t in find_all(browser, "#tiles li")
    }
    assert int(tiles["requests"]) >= 2 and int(tiles["route-only"]) >= 1
    experts = {row.get_attribute("data-expert") for row in find_all(browser, "#experts tr[data-expert]")}
    assert {"medical", "legal"} <= experts
    assert {f.get_attribute("data-domain") for f in find_all(browser, "#confidence figure")} >= {"medical", "legal"}
    assert MEDICAL_QUESTION in find(browser, "#least-confident").text  # texts are logged here (log.store_text)
    assert find_all(browser, "#over-time svg rect"), "no bars in the requests-over-time chart"
    check_accessible(browser, "traffic")
    screenshot(browser, "traffic", full_height=True)
    browser.set_window_size(*PHONE)
    assert fits_width(browser), "the dashboard scrolls sideways at a phone's width"
    screenshot(browser, "traffic-phone", PHONE)
    browser.set_window_size(*LAPTOP)
    errors = [
        entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE" and "401" not in entry["message"]
    ]
    assert errors == [], errors  # no script errors on either page


def test_a_wrong_or_missing_key_gets_a_clear_message(served, browser):
    browser.get(f"{served}/ui/traffic")
    use_key(browser, "sk-not-a-key")
    wait(browser, lambda: "refused this API key" in find(browser, "#notice").text)
    assert find(browser, "#notice").get_attribute("role") == "alert"
    assert find(browser, "#report").get_attribute("data-loaded") == "false"  # nothing half-drawn
    screenshot(browser, "wrong-key")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{served}/ui")
    wait(browser, lambda: "needs an API key" in find(browser, "#notice").text)
    send(browser, "Hello?")
    turn = find_all(browser, "li.turn.assistant")[-1]
    wait(browser, lambda: turn.get_attribute("data-state") == "failed")
    assert "needs an API key" in turn.text
