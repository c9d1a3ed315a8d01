"""The web page while an answer is on its way, in a real headless chromium: behind a proxy
that holds the server's answers to POST /v1/classify until the test lets them go."""

import contextlib
import select
import socket
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image
from selenium.webdriver.common.by import By

from common.pictures import load_png
from tests.http_helpers import ARTIFACTS, QuietHandler, served_on_a_thread
from tests.test_http_page import (
    answered,
    browser,
    canvas,
    opened_with_models,
    pytestmark,
    served,
    wait_for,
)

__all__ = ["browser", "pytestmark", "served"]  # the fixtures this module's tests take; its skip
HOLD_S = 30  # the longest a held answer waits for the test


class Gate(threading.Event):
    """Set, answers pass (``late_s`` late); clear, they are held. ``calls``: how many classify
    calls came so far; ``left``: how many of those the browser hung up on while they were held."""

    calls = left = 0
    late_s = 0.0

    def hold(self, connection: socket.socket) -> bool:
        """Whether the browser hung up while its answer was held."""
        self.calls += 1
        time.sleep(self.late_s)
        deadline = time.monotonic() + HOLD_S
        while not self.wait(0.05) and time.monotonic() < deadline:
            if select.select([connection], [], [], 0)[0] and not connection.recv(
                    1, socket.MSG_PEEK):  # the browser closed the connection: no answer read
                self.left += 1
                return True
        return False


@contextlib.contextmanager
def holding_answers(url: str, sent: float = 0, path: str = "/v1/classify"):
    """``(page URL, let_go)``: ``url``'s server behind a proxy that passes every call on, but
    holds the answers to calls to ``path`` (classify calls) while ``let_go`` (a ``Gate``) is
    clear: before its headers, or with the ``sent`` part of its body sent."""
    let_go = Gate()
    let_go.set()

    class Proxy(QuietHandler):
        def forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = requests.request(
                self.command, url + self.path, data=body, timeout=10,
                headers={name: self.headers[name] for name in ("Content-Type", "Authorization")
                         if name in self.headers})
            held, first = self.path.startswith(path), int(sent * len(answer.content))
            if held and not sent and let_go.hold(self.connection):
                return
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers["Content-Type"])
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content[:first])
            self.wfile.flush()
            if held and sent and let_go.hold(self.connection):
                return
            self.wfile.write(answer.content[first:])

        do_GET = do_POST = forward  # noqa: N815 (http.server's names)

    with served_on_a_thread(Proxy) as proxy:
        try:
            yield f"{proxy}/", let_go
        finally:
            let_go.set()  # held answers go before the proxy stops



def pictures(test_set, tmp_path, *names: str) -> list:
    """The test set's images 0, 2, 4... (an ankle boot, a trouser, ...) as PNG files, named."""
    paths = [tmp_path / name for name in names]
    for index, path in enumerate(paths):
        Image.fromarray(test_set[0][2 * index]).save(path)
    return paths


def hint(browser) -> str:
    """What the page adds to its status line, after its words."""
    return browser.execute_script("return getComputedStyle(document.getElementById('status'), "
                                  "'::after').content")


def test_the_last_answer_stays_dimmed_and_busy_while_the_next_is_on_its_way(served, browser,
                                                                             test_set, tmp_path):
    """While a second picture was being classified, an empty black square stood beside the bare
    headings "model" and "baseline": the last answer was wiped, and nothing came in its place
    until the next answer arrived."""
    url, _ = served
    boot, trouser = pictures(test_set, tmp_path, "boot.png", "trouser.png")
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        answer = element(By.ID, "answer")
        answered(browser, boot)
        shown = (element(By.ID, "model-name").text, element(By.ID, "model-label").text,
                 element(By.ID, "truth").text)
        below = element(By.ID, "status").location["y"]
        assert answer.get_attribute("aria-busy") in (None, "false")

        let_go.clear()
        element(By.ID, "file").send_keys(str(trouser))
        wait_for(browser, lambda: "trouser.png" in element(By.ID, "status").text)
        # dimmed a moment after the call went (a quick answer does not blink the page)
        wait_for(browser, lambda: float(answer.value_of_css_property("opacity")) < 0.6)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "http_page_busy.png"))
        assert answer.is_displayed() and answer.get_attribute("aria-busy") == "true"
        assert np.array_equal(canvas(browser), load_png(boot))
        assert (element(By.ID, "model-name").text, element(By.ID, "model-label").text,
                element(By.ID, "truth").text) == shown
        assert element(By.ID, "status").location["y"] == below  # nothing below it moved

        let_go.set()
        wait_for(browser, lambda: "trouser.png" in element(By.ID, "truth").text)
        assert answer.get_attribute("aria-busy") in (None, "false")
        wait_for(browser, lambda: float(answer.value_of_css_property("opacity")) == 1)
        assert np.array_equal(canvas(browser), load_png(trouser))


@pytest.mark.parametrize("sent", [0, 0.5], ids=["before-its-headers", "half-its-body"])
def test_an_answer_that_never_comes_is_said_in_one_line(served, browser, test_set, tmp_path,
                                                        sent):
    """A server (or a proxy) that took the call and never answered left "classifying boot.png..."
    under the picture for good, with no word that nothing would come."""
    url, _ = served
    (boot,) = pictures(test_set, tmp_path, "boot.png")
    with holding_answers(url, sent) as (page, let_go):
        element = opened_with_models(browser, page)
        browser.execute_script("ANSWER_TIMEOUT_S = 1")  # 120 s: room for a slow upload
        let_go.clear()
        element(By.ID, "file").send_keys(str(boot))
        wait_for(browser, lambda: element(By.ID, "error").text)
        origin = page.rstrip("/")
        assert element(By.ID, "error").text == (
            f"no answer from the server at {origin} in 1 s: is it overloaded, or stuck?")
        assert element(By.ID, "status").text == ""
        assert not element(By.ID, "answer").is_displayed()


def test_a_wait_is_said_to_a_screen_reader(served, browser, test_set, tmp_path):
    """"classifying trouser.png..." stood under the picture, but in no live region: a screen
    reader said nothing between the press and the answer, however long the wait."""
    url, _ = served
    boot, trouser = pictures(test_set, tmp_path, "boot.png", "trouser.png")
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        spoken = element(By.ID, "spoken")
        element(By.ID, "file").send_keys(str(boot))
        wait_for(browser, lambda: "boot.png, as" in spoken.get_attribute("textContent"))
        # past the page's wait (1 s from the press) before it says "classifying": a timer of
        # the same length set after the page's (the answer is in) runs after it
        browser.execute_script(
            "window.pastTheWait = false; setTimeout(() => { window.pastTheWait = true; }, 1000);")
        wait_for(browser, lambda: browser.execute_script("return window.pastTheWait"))
        assert "boot.png, as the model sees it" in spoken.get_attribute("textContent")
        let_go.clear()
        element(By.ID, "file").send_keys(str(trouser))
        wait_for(browser, lambda: "trouser" in spoken.get_attribute("textContent"))
        assert spoken.get_attribute("textContent") == "classifying trouser.png..."
        assert spoken.get_attribute("role") == "status"
        let_go.set()
        wait_for(browser, lambda: "model sees" in spoken.get_attribute("textContent"))
        assert spoken.get_attribute("textContent").startswith("trouser.png, as the model sees it")


def test_a_wait_is_said_where_a_phone_shows_it(served, browser, test_set, tmp_path):
    """On a phone, "classifying ..." stood under both answers, below the screen's edge: the
    last answer dimmed with no word of why, whatever the file's name."""
    url, _ = served
    boot, long_name = pictures(test_set, tmp_path, "boot.png",
                               f"{'IMG_20261203_101010_0001_' * 4}.png")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": True})
    try:
        with holding_answers(url) as (page, let_go):
            element = opened_with_models(browser, page)
            answered(browser, boot)
            picture_at = element(By.ID, "image").rect
            let_go.clear()
            element(By.ID, "file").send_keys(str(long_name))
            wait_for(browser, lambda: element(By.ID, "status").text)
            status = element(By.ID, "status").rect
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "http_page_busy_phone.png"))
            assert status["y"] >= 0 and status["y"] + status["height"] <= 740, status
            assert hint(browser) == "none"  # "(Esc cancels)": a phone has no Esc key
            assert element(By.ID, "image").rect == picture_at  # nothing moved for the line
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_browser_without_abort_timeouts_still_answers(served, browser, test_set):
    """AbortSignal.timeout, which gives up on a call that never ends, came to Safari in 16: on
    an older iPhone every call of the page failed with "AbortSignal.timeout is not a
    function"."""
    url, _ = served
    element = opened_with_models(browser, url)
    browser.execute_script("delete AbortSignal.timeout")  # as Safari 15 has it
    element(By.ID, "random").click()
    wait_for(browser, lambda: element(By.ID, "error").text
             or element(By.ID, "truth").get_attribute("data-index"))
    assert element(By.ID, "error").text == ""
