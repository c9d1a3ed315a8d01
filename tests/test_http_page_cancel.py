"""The web page's wait given up on by its person, in a real headless chromium: Esc ends the
call on its way (behind test_http_page_wait's proxy, which holds the answers)."""

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.test_http_page import browser, opened_with_models, pytestmark, served, wait_for
from tests.test_http_page_wait import holding_answers, pictures

__all__ = ["browser", "pytestmark", "served"]  # the fixtures this module's tests take; its skip


def test_esc_gives_up_on_a_wait(served, browser, test_set, tmp_path):
    """A server slow to answer (or a slow link) held "classifying boot.png..." on the page until
    the page's own limit, 120 s: nothing a person pressed ended the wait."""
    url, _ = served
    (boot,) = pictures(test_set, tmp_path, "boot.png")
    with holding_answers(url) as (page, let_go):
        element = opened_with_models(browser, page)
        let_go.clear()
        element(By.ID, "file").send_keys(str(boot))
        wait_for(browser, lambda: element(By.ID, "status").text == "classifying boot.png...")
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()
        wait_for(browser, lambda: let_go.left == 1)  # the browser hung up: the call ended
        assert element(By.ID, "status").text == "classifying boot.png: cancelled"
        assert element(By.ID, "spoken").get_attribute("textContent") == (
            "classifying boot.png: cancelled")  # a screen reader's word of it too
        assert element(By.ID, "error").text == "" and not element(By.ID, "answer").is_displayed()
        let_go.set()
        element(By.ID, "random").click()  # the next wait: the word of the last one goes
        wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
        assert element(By.ID, "status").text == ""
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()  # nothing to end: the answer stays
        assert element(By.ID, "answer").is_displayed() and element(By.ID, "status").text == ""
