"""The web page's calls to the server as a person's choices follow one another, in a real
headless chromium, behind tests/test_http_page_wait.py's proxy that holds answers."""

import numpy as np
import pytest
from selenium.webdriver.common.by import By

from common.pictures import load_png
from tests.test_http_page import (
    answered,
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
        # said 5 s after the click, not 3.5 + 5 (the image's wait, then the call's): 6.5 between
        browser.execute_script("ANSWER_TIMEOUT_S = 5")
        delay_test_images(browser, late_s=3.5)  # then no answer
        let_go.clear()
        browser.execute_script("""
            const error = document.getElementById("error");
            new MutationObserver(() => { if (error.textContent && !window.saidAfter)
                window.saidAfter = performance.now() - window.clickedAt; }).observe(
                error, {childList: true, characterData: true, subtree: true});
            window.clickedAt = performance.now(); document.getElementById("random").click();""")
        wait_for(browser, lambda: element(By.ID, "error").text)
        assert element(By.ID, "error").text == (
            f"no answer from the server at {page.rstrip('/')} in 5 s: is it overloaded, or stuck?")
        assert browser.execute_script("return window.saidAfter") < 6500


def test_a_silence_is_counted_in_the_status_line_up_to_the_limit(served, browser):
    """A random test image that a server answered nothing for stood as "classifying a test
    image..." for the page's whole limit (120 s), then "no answer ...": nothing said in the
    meanwhile that nothing had come, nor how long the page would wait."""
    url, _ = served
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        browser.execute_script("""ANSWER_TIMEOUT_S = 4; ANSWER_QUIET_S = 1;
            window.said = []; window.spoken = [];
            for (const [id, words] of [["status", said], ["spoken", spoken]]) {
              new MutationObserver(() => words.push(document.getElementById(id).textContent))
                .observe(document.getElementById(id), {childList: true});
            }""")
        let_go.clear()
        element(By.ID, "random").click()
        wait_for(browser, lambda: element(By.ID, "error").text)
        said = [words for words in browser.execute_script("return window.said") if words]
        assert said[0] == "classifying a test image...", said
        assert said[1:] == [f"no answer yet: {s} s of 4 s..." for s in range(1, len(said))]
        assert len(said) >= 3, said  # counted, a second at a time
        spoken = [words for words in browser.execute_script("return window.spoken") if words]
        assert spoken == ["classifying a test image...", "no answer yet: 1 s of 4 s..."], spoken


def test_a_model_list_the_server_does_not_give_is_counted_in_the_status_line(served, browser):
    """Coming back to the page of a stuck server, the model list asked for again and not
    given, nothing was said for the page's whole limit (120 s): the page stood as if all was
    well, then "no answer ..."."""
    url, _ = served
    with holding_answers(url, path="/v1/models") as (page, let_go):
        element = opened_with_models(browser, page)
        browser.execute_script("ANSWER_TIMEOUT_S = 4; ANSWER_QUIET_S = 1; window.said = [];"
                               "const status = document.getElementById('status');"
                               "new MutationObserver(() => said.push(status.textContent))"
                               ".observe(status, {childList: true});")
        let_go.clear()
        browser.execute_script("dispatchEvent(new Event('focus'))")  # the person back
        wait_for(browser, lambda: element(By.ID, "error").text)
        assert element(By.ID, "error").text == (
            f"no answer from the server at {page.rstrip('/')} in 4 s: is it overloaded, or stuck?")
        said = browser.execute_script("return window.said")
        assert said[-1] == "" and len(said) >= 3, said  # its words gone with the wait
        assert said[:-1] == [f"no model list yet: {s} s of 4 s..." for s in range(1, len(said))]


def opacities(browser, element, picture, seconds: float) -> list[tuple[float, float]]:
    """``(ms, opacity)`` of the answer area at each frame for ``seconds`` after ``picture`` was
    chosen (1 while it is out of sight)."""
    browser.execute_script("""
        const answer = document.getElementById("answer"), start = performance.now();
        window.seen = [];
        (function sample() {
          seen.push([performance.now() - start,
                     answer.hidden ? 1 : Number(getComputedStyle(answer).opacity)]);
          if (performance.now() - start < arguments[0]) requestAnimationFrame(sample);
        })();""".replace("arguments[0]", str(1000 * seconds)))
    element(By.ID, "file").send_keys(str(picture))
    wait_for(browser, lambda: browser.execute_script("return seen[seen.length - 1][0]")
             >= 1000 * seconds)
    return browser.execute_script("return seen")


@pytest.mark.parametrize("late_s", [0.35, 1.0])
def test_the_busy_cue_does_not_blink(served, browser, test_set, tmp_path, late_s):
    """An answer in 0.3 to 0.5 s began to dim the last one, then snapped it back at once: a
    blink for each quick answer; and a slower one's dimmed answer jumped back to full."""
    url, _ = served
    boot, trouser = pictures(test_set, tmp_path, "boot.png", "trouser.png")
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        answered(browser, boot)
        let_go.late_s = late_s
        seen = opacities(browser, element, trouser, late_s + 1.5)
    assert "trouser.png" in element(By.ID, "truth").text
    dimmed = [ms for ms, opacity in seen if opacity < 1]
    if late_s < 0.5:
        assert dimmed == [], seen  # not dimmed at all
        return
    darkest = min(opacity for _, opacity in seen)
    back = next(ms for ms, opacity in seen if ms > dimmed[0] and opacity == 1)
    low = max(ms for ms, opacity in seen if ms < back and opacity <= 0.5)
    assert darkest <= 0.5 and back - low >= 120, seen  # faded back, not snapped
    assert back - dimmed[0] >= 500, seen  # there long enough to be seen for what it is


def test_a_first_answer_after_a_wait_is_not_shown_dimmed(served, browser, test_set, tmp_path):
    """With no answer yet there is nothing to dim; but a first answer after a wait came in
    dimmed, as if still on its way, and only then grew clear."""
    url, _ = served
    (boot,) = pictures(test_set, tmp_path, "boot.png")
    with holding_answers(url) as (page, let_go):
        opened_with_models(browser, page)
        let_go.late_s = 1.0
        seen = opacities(browser, browser.find_element, boot, 2.5)
    assert [opacity for _, opacity in seen if opacity < 1] == [], seen
