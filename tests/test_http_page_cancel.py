"""The web page's waits ended, in a real headless chromium: by its person (Esc), or by the page
once nothing has moved for its limit (a slow upload that goes on is waited for)."""

import contextlib
import re

import numpy as np
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.test_http_page import answered, browser, opened_with_models, pytestmark, served, wait_for
from tests.test_http_page_drawing import stroke
from tests.test_http_page_wait import hint, holding_answers, pictures

__all__ = ["browser", "pytestmark", "served"]  # the fixtures this module's tests take; its skip


@contextlib.contextmanager
def boot_on_its_way(served, browser, test_set, tmp_path):
    """The page opened, boot.png chosen, its answer held back by the server: yields the page's
    ``element`` finder and ``let_go`` (holding_answers')."""
    url, _ = served
    (boot,) = pictures(test_set, tmp_path, "boot.png")
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        let_go.clear()
        element(By.ID, "file").send_keys(str(boot))
        wait_for(browser, lambda: element(By.ID, "status").text == "classifying boot.png...")
        yield element, let_go


def test_esc_gives_up_on_a_wait(served, browser, test_set, tmp_path):
    """A server slow to answer (or a slow link) held "classifying boot.png..." on the page until
    the page's own limit, 120 s: nothing a person pressed ended the wait."""
    with boot_on_its_way(served, browser, test_set, tmp_path) as (element, let_go):
        assert hint(browser) == '" (Esc cancels)"'  # a key no one knew of, said where it works
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()
        wait_for(browser, lambda: let_go.left == 1)  # the browser hung up: the call ended
        assert element(By.ID, "status").text == "classifying boot.png: cancelled"
        assert element(By.ID, "spoken").get_attribute("textContent") == (
            "classifying boot.png: cancelled")  # a screen reader's word of it too
        assert element(By.ID, "error").text == "" and not element(By.ID, "answer").is_displayed()
        assert hint(browser) == "none"  # no wait to cancel
        let_go.set()
        element(By.ID, "random").click()  # the next wait: the word of the last one goes
        wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
        assert element(By.ID, "status").text == ""
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()  # nothing to end: the answer stays
        assert element(By.ID, "answer").is_displayed() and element(By.ID, "status").text == ""


def test_esc_takes_back_what_was_started_and_keeps_the_answer_before_it(served, browser,
                                                                        test_set, tmp_path):
    """Esc, pressed by a person who changed their mind while the next answer was on its way,
    took the last answer away too: the page stood empty, and the model list still named the
    model whose answer was given up on. The answer before stays, and the controls go back to
    what it was asked with: what they ask again for is what is shown."""
    url, _ = served
    boot, trouser = pictures(test_set, tmp_path, "boot.png", "trouser.png")
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        answered(browser, boot)
        answer = element(By.ID, "answer")
        shown = element(By.ID, "model-name").text, element(By.ID, "model-label").text
        let_go.clear()
        for change in (lambda: Select(element(By.ID, "model")).select_by_value("softmax"),
                       lambda: element(By.ID, "invert").click(),
                       lambda: element(By.ID, "file").send_keys(str(trouser))):
            left = let_go.left
            change()
            wait_for(browser, lambda: element(By.ID, "status").text)
            ActionChains(browser).send_keys(Keys.ESCAPE).perform()
            wait_for(browser, lambda left=left: let_go.left == left + 1)  # its call ended
            assert element(By.ID, "status").text.endswith(": cancelled")
            assert answer.is_displayed() and answer.get_attribute("aria-busy") is None
            wait_for(browser, lambda: float(answer.value_of_css_property("opacity")) == 1)
            assert (element(By.ID, "model-name").text,
                    element(By.ID, "model-label").text) == shown
            assert "boot.png" in element(By.ID, "truth").text
            assert element(By.ID, "model").get_attribute("value") == ""  # as it was asked
            assert not element(By.ID, "invert").is_selected()
        let_go.set()
        Select(element(By.ID, "model")).select_by_value("softmax")  # asks again for boot.png
        wait_for(browser, lambda: element(By.ID, "model-name").text.startswith("softmax v"))
        assert "boot.png" in element(By.ID, "truth").text


def test_esc_in_the_token_box_closes_it_and_cancels_nothing(served, browser, test_set,
                                                            tmp_path):
    """Esc pressed to close the token box, opened while a call was on its way (to type the
    token it asked for, say), cancelled the call, and left the box open. Esc closes the box
    alone, the field in focus or not; with the box closed, Esc cancels again."""
    with boot_on_its_way(served, browser, test_set, tmp_path) as (element, let_go):
        box = element(By.ID, "token-box")
        # in focus: the field, the box's heading (clicked to open it), or outside the box;
        # then: the heading, not a field gone from sight, or what was
        for clicked, focus in (("#token", "summary"), (None, "summary"), ("h1", "body")):
            box.find_element(By.TAG_NAME, "summary").click()
            if clicked:
                browser.find_element(By.CSS_SELECTOR, clicked).click()
            assert hint(browser) == "none", clicked  # Esc would not cancel: not said
            ActionChains(browser).send_keys(Keys.ESCAPE).perform()
            assert element(By.ID, "status").text == "classifying boot.png...", clicked
            assert box.get_attribute("open") is None, clicked
            assert browser.switch_to.active_element.tag_name == focus, clicked
        assert hint(browser) == '" (Esc cancels)"'
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()
        wait_for(browser, lambda: let_go.left == 1)  # the browser hung up: the call ended
        assert element(By.ID, "status").text == "classifying boot.png: cancelled"


def test_clear_while_a_drawing_is_on_its_way_keeps_the_pictures_answer_before_it(
        served, browser, test_set, tmp_path):
    """"Clear" pressed while a drawing's answer was on its way took the picture's answer shown
    before it away too, though that was no drawing's."""
    url, _ = served
    (boot,) = pictures(test_set, tmp_path, "boot.png")
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        answered(browser, boot)
        let_go.clear()
        stroke(browser, interaction.POINTER_MOUSE, (0.2, 0.5), (0.8, 0.5))
        wait_for(browser, lambda: let_go.calls == 2)
        wait_for(browser, lambda: element(By.ID, "status").text)
        assert hint(browser) == '" (Esc cancels)"'
        element(By.ID, "clear-drawing").click()
        wait_for(browser, lambda: let_go.left == 1)  # the drawing's call ended
        assert element(By.ID, "answer").is_displayed()
        assert "boot.png" in element(By.ID, "truth").text
        assert element(By.ID, "answer").get_attribute("aria-busy") is None


def noise(path, side: int):
    """A PNG of ``side`` x ``side`` random colours: about 3 * side**2 bytes, which PNG cannot
    make smaller."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)).save(
        path)
    return path


def test_a_slow_upload_that_goes_on_is_waited_for(served, browser, tmp_path):
    """The page gave up on an upload after its limit (120 s) even while the picture was going, on
    a slow link: "the picture was still being sent ... after 120 s". On a 280-pixel phone (where
    slow links are) how much had gone is said whole: "sending the picture: 120 kB of 1..." was
    cut short at the line's end."""
    url, _ = served
    picture = noise(tmp_path / "noise.png", 320)  # 300 kB: 7.5 s at 40 kB/s
    element = opened_with_models(browser, url)
    browser.execute_script("""ANSWER_TIMEOUT_S = 3; window.said = []; window.cut = [];
        const status = document.getElementById("status");
        new MutationObserver(() => {
          said.push(status.textContent);
          if (status.scrollWidth > status.clientWidth) cut.push(status.textContent);
        }).observe(status, {childList: true});""")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # laid out anew
        "width": 280, "height": 653, "deviceScaleFactor": 1, "mobile": True})
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 40_000})
    try:
        element(By.ID, "file").send_keys(str(picture))
        wait_for(browser, lambda: element(By.ID, "error").text
                 or "noise.png" in element(By.ID, "truth").text)
    finally:
        browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        browser.execute_cdp_cmd("Network.disable", {})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert element(By.ID, "error").text == ""
    assert browser.execute_script("return window.cut") == []
    # and while it went, how much had; then what the server was doing
    said = [words for words in browser.execute_script("return window.said") if words]
    sent = [re.fullmatch(r"sending: (\d+) kB of (\d+) kB\.\.\.", words)
            for words in said[:-1]]
    assert sent and all(sent) and said[-1] == "classifying noise.png...", said
    assert int(sent[0][1]) < int(sent[-1][1]) <= int(sent[-1][2]) == round(
        picture.stat().st_size / 1e3)


def test_an_upload_that_stops_is_said_to_have_stopped(served, browser, tmp_path):
    """A picture's upload that no longer goes (a link gone dead) is said once nothing more of it
    went for the page's limit, with how much went: on a link of 100 bytes a second, chromium's
    throttling sends the first 16 kB, and the next 16 kB in minutes."""
    url, _ = served
    picture = noise(tmp_path / "noise.png", 320)
    element = opened_with_models(browser, url)
    browser.execute_script("ANSWER_TIMEOUT_S = 2")
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 100})
    try:
        element(By.ID, "file").send_keys(str(picture))
        wait_for(browser, lambda: element(By.ID, "error").text)
    finally:
        browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        browser.execute_cdp_cmd("Network.disable", {})
    said = re.fullmatch(r"the picture stopped going to the server at (\S+): no more of it went "
                        r"in 2 s \((\d+) kB of (\d+) kB went\): is the link down\?",
                        element(By.ID, "error").text)
    assert said, element(By.ID, "error").text
    assert said[1] == url.rstrip("/")
    assert 0 <= int(said[2]) < int(said[3]) == round(picture.stat().st_size / 1e3)
