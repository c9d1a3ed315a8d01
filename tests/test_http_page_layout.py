"""The page's layout at a 280-pixel phone's width, a 360-pixel one's and a desktop's, in a real
headless chromium: nothing runs past the screen's edge, and the drawing pad's buttons are
where a thumb or a pointer finds them."""

import pytest
from selenium.webdriver.common.by import By

from tests.http_helpers import ARTIFACTS
from tests.test_http_page import browser, opened_with_models, pytestmark, served, wait_for

__all__ = ["browser", "pytestmark", "served"]  # the fixtures this module's tests take; its skip

OVER_THE_EDGE = """return [...document.body.querySelectorAll("*")].filter((element) => {
    const box = element.getBoundingClientRect();
    return box.width && (box.left < -0.5 || box.right > innerWidth + 0.5);
  }).map((element) => element.id || element.tagName);"""


@pytest.mark.parametrize(("width", "height", "phone"), [
    (280, 653, True), (360, 740, True), (1280, 800, False)])
def test_nothing_runs_past_the_screens_edge_and_the_pads_buttons_are_in_reach(
        served, browser, width, height, phone):
    """On a 280-pixel phone the pad's two buttons stood one under the other below it, at its
    left, a column of two half-empty rows: now they share one row under the pad, as wide as
    it is; where there is room, they stand beside it."""
    url, _ = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": phone})
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": phone})
    try:
        element = opened_with_models(browser, url)
        element(By.ID, "token-box").click()
        element(By.ID, "random").click()
        wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
        assert browser.execute_script(OVER_THE_EDGE) == []
        # a flag's name whole on one line ("--" at one line's end, "auth-token" the next's)
        assert browser.execute_script("""return [...document.querySelectorAll("code")].filter(
            (code) => code.getClientRects().length > 1).length""") == 0
        pad, classify, clear = (element(By.ID, name).rect for name in (
            "drawing", "classify-drawing", "clear-drawing"))
        if width < 300:  # in one row under the pad, as wide as it
            assert classify["y"] == clear["y"] >= pad["y"] + pad["height"]
            assert classify["x"] == pad["x"]
            assert clear["x"] + clear["width"] == pytest.approx(pad["x"] + pad["width"], abs=1)
        else:  # beside it
            assert classify["x"] >= pad["x"] + pad["width"] and classify["y"] == pad["y"]
        for name in ("classify-drawing", "clear-drawing"):  # nothing over them
            button = element(By.ID, name)
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
            assert browser.execute_script("""const box = arguments[0].getBoundingClientRect();
                return document.elementFromPoint(box.left + box.width / 2,
                                                 box.top + box.height / 2)""", button) == button
        browser.execute_script("scrollTo(0, 0)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / f"http_page_layout_{width}.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
