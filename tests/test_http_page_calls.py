"""The web page's calls to the server as a person's choices follow one another, in a real
headless chromium, behind tests/test_http_page_wait.py's proxy that holds answers."""

import numpy as np
from selenium.webdriver.common.by import By

from serving.client.inputs import load_png
from tests.test_http_page import (
    browser,
    canvas,
    delay_test_images,
    opened_with_models,
    pytestmark,
    served,
    wait_for,
)
from tests.test_http_page_wait import holding_answers, pictures

__all__ = ["browser", "pytestmark", "served"]  # the fixtures this module's tests take; its skip


def test_a_new_choice_cancels_the_call_before_it(served, browser, test_set, tmp_path):
    """A second picture chosen while the first was on its way left the first call running to
    its end, its answer never to be shown: on a slow link its upload and answer shared the line
    with the second's, which came the later for it."""
    url, _ = served
    boot, trouser = pictures(test_set, tmp_path, "boot.png", "trouser.png")
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        let_go.clear()
        element(By.ID, "file").send_keys(str(boot))
        wait_for(browser, lambda: let_go.calls == 1)
        element(By.ID, "file").send_keys(str(trouser))
        wait_for(browser, lambda: let_go.calls == 2)
        wait_for(browser, lambda: let_go.left == 1)  # the boot's call: the browser hung up
        let_go.set()
        wait_for(browser, lambda: "trouser.png" in element(By.ID, "truth").text)
        assert np.array_equal(canvas(browser), load_png(trouser))
        assert element(By.ID, "error").text == ""


def test_a_random_test_image_is_given_up_on_once_in_the_time_said(served, browser):
    """"Random test image" made two calls, each given 120 s: a server that was slow to give the
    image and then answered nothing had the person wait up to 240 s for "no answer ... in
    120 s"."""
    url, _ = served
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        browser.execute_script("ANSWER_TIMEOUT_S = 3")
        delay_test_images(browser)  # the image in 1.5 s, then no answer
        let_go.clear()
        browser.execute_script("""
            const error = document.getElementById("error");
            new MutationObserver(() => { if (error.textContent && !window.saidAfter)
                window.saidAfter = performance.now() - window.clickedAt; }).observe(
                error, {childList: true, characterData: true, subtree: true});
            window.clickedAt = performance.now(); document.getElementById("random").click();""")
        wait_for(browser, lambda: element(By.ID, "error").text)
        assert element(By.ID, "error").text == (
            f"no answer from the server at {page.rstrip('/')} in 3 s: is it overloaded, or stuck?")
        assert browser.execute_script("return window.saidAfter") < 3800  # not 1.5 + 3 s
