"""The page's drawing pad in a real headless chromium: strokes drawn with a mouse, a pen and a
finger (WebDriver's pointer actions) are classified as the server makes 28x28 of a picture
file (the page sends the pad as a PNG, as it sends a picked one), light on dark as
Fashion-MNIST's images are."""

import base64
import io

import numpy as np
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from common.pictures import load_png
from tests.test_http_page import (
    browser,
    canvas,
    labels,
    opened_with_models,
    pytestmark,
    served,
    shown,
    wait_for,
)

__all__ = ["browser", "pytestmark", "served"]  # the fixtures this module's tests take; its skip


def stroke(browser, kind: str, *points: tuple[float, float]) -> None:
    """One stroke through ``points`` (fractions of the pad's width and height from its top
    left corner) with a pointer of ``kind`` (interaction.POINTER_MOUSE, _PEN or _TOUCH)."""
    pad = browser.find_element(By.ID, "drawing")
    width, height = pad.rect["width"], pad.rect["height"]
    actions = ActionBuilder(browser, mouse=PointerInput(kind, kind))
    pointer = actions.pointer_action
    for step, (x, y) in enumerate(points):  # WebDriver's offsets are from the middle
        pointer.move_to(pad, (x - 0.5) * width, (y - 0.5) * height)
        if step == 0:
            pointer.pointer_down()
    pointer.pointer_up()
    actions.perform()


def pad_as_the_model_sees_it(browser) -> np.ndarray:
    """The pad as the page sends it (a PNG), made 28x28 by the server's own code."""
    return load_png(io.BytesIO(base64.b64decode(browser.execute_script(
        "return padPicture.toDataURL()").split(",", 1)[1])))


def keep_what_is_sent(browser) -> None:
    """``window.sent``: the body of each picture the page sends, as a data: URL."""
    browser.execute_script("""window.sent = []; const send = XMLHttpRequest.prototype.send;
        XMLHttpRequest.prototype.send = function (body) {
          const reader = new FileReader();
          reader.onload = () => window.sent.push(reader.result);
          reader.readAsDataURL(body);
          return send.call(this, body); };""")


def sent_png(browser) -> bytes:
    wait_for(browser, lambda: browser.execute_script("return window.sent.length"))
    return base64.b64decode(browser.execute_script("return window.sent.pop()").split(",", 1)[1])


def answered(browser, count: int) -> None:
    """Until the drawing's ``count``-th answer stands (``window.answers``: the page's
    announcements of the drawing, counted)."""
    wait_for(browser, lambda: browser.execute_script("return window.answers") >= count)
    assert browser.find_element(By.ID, "error").text == ""


def count_answers(browser) -> None:
    browser.execute_script("""window.answers = 0;
        new MutationObserver(() => { if (document.getElementById("spoken").textContent
            .startsWith("your drawing, as")) window.answers += 1; }).observe(
            document.getElementById("spoken"), {childList: true, characterData: true});""")


def test_strokes_are_classified_as_the_28x28_picture_of_the_drawing(served, browser,
                                                                     tmp_path):
    """The page had no way to draw a garment: only test images and picture files."""
    url, stub = served
    element = opened_with_models(browser, url)
    element(By.ID, "invert").click()  # for picture files: a drawing is light on dark already
    count_answers(browser)
    stroke(browser, interaction.POINTER_MOUSE, (0.2, 0.5), (0.5, 0.5), (0.8, 0.5))
    answered(browser, 1)
    sent = pad_as_the_model_sees_it(browser)
    assert np.array_equal(canvas(browser), sent)  # the server's 28x28: of the pad as it stood
    assert sent[:10].max() == 0 and sent[18:].max() == 0  # dark but for the stroke
    assert sent[13:15, 8:20].min() > 100, sent[12:16]  # across the middle
    assert shown(browser) == labels(stub, sent)
    assert element(By.ID, "truth").text == "your drawing, as the model sees it"

    stroke(browser, interaction.POINTER_PEN, (0.5, 0.15), (0.5, 0.85))  # each stroke's end
    answered(browser, 2)
    both = pad_as_the_model_sees_it(browser)
    assert both[6:22, 13:15].min() > 100 and both[13:15, 8:20].min() > 100
    assert np.array_equal(canvas(browser), both)

    element(By.ID, "clear-drawing").send_keys(Keys.ENTER)  # by keyboard: the buttons are
    assert pad_as_the_model_sees_it(browser).max() == 0
    # said to a screen reader, which had no word of it (the pad is an image to it)
    assert element(By.ID, "spoken").get_attribute("textContent") == "drawing cleared"
    assert not element(By.ID, "answer").is_displayed()  # no answer stands for what went
    element(By.ID, "classify-drawing").send_keys(Keys.ENTER)
    assert element(By.ID, "error").text == "the drawing is empty: draw a garment in the square"
    element(By.ID, "clear-drawing").send_keys(Keys.ENTER)
    assert element(By.ID, "error").text == ""

    stroke(browser, interaction.POINTER_TOUCH, (0.3, 0.2), (0.7, 0.8))
    answered(browser, 3)
    element(By.ID, "random").click()
    wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
    ActionChains(browser).move_to_element(element(By.ID, "classify-drawing")).click().perform()
    answered(browser, 4)
    assert np.array_equal(canvas(browser), pad_as_the_model_sees_it(browser))

    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    element(By.ID, "file").send_keys(str(notes))
    wait_for(browser, lambda: element(By.ID, "error").text)
    element(By.ID, "clear-drawing").click()  # the drawing's, not the file's error, to take away
    assert element(By.ID, "error").text.startswith("notes.png: not a picture")


def test_the_pad_keeps_to_the_narrowest_phones_width_and_a_finger_draws_on_it(served, browser):
    """On a 280-pixel-wide touch screen the pad fits, and a finger's stroke draws (not scrolls
    the page)."""
    url, _ = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 280, "height": 653, "deviceScaleFactor": 2, "mobile": True})
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    try:
        opened_with_models(browser, url)
        browser.execute_script("""document.getElementById("drawing").addEventListener(
            "pointerup", () => { window.scrolledBy = scrollY; });""")  # before its answer
        count_answers(browser)
        stroke(browser, interaction.POINTER_TOUCH, (0.5, 0.9), (0.5, 0.1))  # up: not a swipe
        answered(browser, 1)
        assert browser.execute_script("return window.scrolledBy") == 0
        assert pad_as_the_model_sees_it(browser)[4:24, 13:15].min() > 100
        assert browser.execute_script("return document.documentElement.scrollWidth") == 280
    finally:
        browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_pad_draws_at_the_screens_resolution_and_sends_the_png_it_sent(served, browser):
    """On a screen of 2 device pixels to a CSS pixel the pad's 280x280 bitmap was stretched
    over 332 pixels: its strokes looked soft. It draws at the device's pixels now, and sends
    the same 280x280 PNG as on a screen of 1; the server's 28x28 is of that PNG."""
    url, _ = served
    sent = {}
    for scale in (1, 2):
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 900, "height": 640, "deviceScaleFactor": scale, "mobile": False})
        try:
            opened_with_models(browser, url)
            keep_what_is_sent(browser)
            count_answers(browser)
            stroke(browser, interaction.POINTER_MOUSE, (0.2, 0.3), (0.5, 0.7), (0.8, 0.3))
            answered(browser, 1)
            png = sent_png(browser)
            assert np.array_equal(canvas(browser), load_png(io.BytesIO(png)))
            sent[scale] = np.asarray(Image.open(io.BytesIO(png)))
            assert browser.execute_script("""const pad = document.getElementById("drawing");
                return [pad.width, pad.height, pad.clientWidth * devicePixelRatio]""") == [
                332 * scale // 2, 332 * scale // 2, 332 * scale // 2]
        finally:
            browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert sent[1].shape[:2] == (280, 280) and np.array_equal(sent[1], sent[2])


def test_on_a_phone_the_answer_comes_into_sight(served, browser):
    """On a 280-pixel-wide phone the answer came under the drop zone and the pad, below the
    screen's edge: "Random test image" pressed, the page stood still, as if nothing came. A
    drawing's answer comes into sight with the pad kept on the screen."""
    url, _ = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 280, "height": 653, "deviceScaleFactor": 1, "mobile": True})
    edge = "return document.getElementById(arguments[0]).getBoundingClientRect()[arguments[1]]"
    try:
        element = opened_with_models(browser, url)
        element(By.ID, "random").click()
        wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
        assert browser.execute_script(edge, "model-bars", "bottom") <= 653

        browser.execute_script("scrollTo(0, 0)")
        count_answers(browser)
        stroke(browser, interaction.POINTER_TOUCH, (0.5, 0.1), (0.5, 0.9))
        answered(browser, 1)
        assert browser.execute_script(edge, "model-label", "bottom") <= 653
        assert browser.execute_script(edge, "drawing", "top") > -1  # (a fraction of a pixel)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_drawing_cleared_while_its_png_is_made_is_not_sent(served, browser):
    """"Clear" pressed while the page made the pad's PNG (a slow device) took the drawing
    away, but the PNG went on to the server, and an answer came for a drawing no longer there."""
    url, _ = served
    element = opened_with_models(browser, url)
    browser.execute_script("""const original = HTMLCanvasElement.prototype.toBlob;
        HTMLCanvasElement.prototype.toBlob = function (done, ...options) {  // held till let go
          original.call(this, (png) => { window.letPngGo = () => done(png); }, ...options); };""")
    count_answers(browser)
    stroke(browser, interaction.POINTER_MOUSE, (0.2, 0.5), (0.8, 0.5))
    wait_for(browser, lambda: browser.execute_script("return window.letPngGo !== undefined"))
    element(By.ID, "clear-drawing").click()
    browser.execute_script("letPngGo()")
    element(By.ID, "random").click()  # a later answer: the drawing's, had it gone, came first
    wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
    assert browser.execute_script("return window.answers") == 0


def filled(browser, left: float, top: float, width: float, height: float) -> None:
    """A rectangle filled by one stroke to and fro across it (fractions of the pad as stroke's),
    its lines closer than the pen is wide."""
    rows = np.linspace(top, top + height, 2 + int(height / 0.04))
    stroke(browser, interaction.POINTER_MOUSE, *((x, y) for i, y in enumerate(rows)
                                                 for x in (left, left + width)[::1 - 2 * (i % 2)]))


def test_a_small_drawing_in_a_corner_is_seen_as_the_same_drawn_large_and_centred(served,
                                                                                  browser):
    """A drawing was made 28x28 as it stood on the pad: a small one in a corner stayed a few
    pixels in a corner of the model's 28x28 (Fashion-MNIST's garments fill theirs, centred),
    and was answered otherwise than the same shape drawn large in the middle."""
    url, stub = served
    element = opened_with_models(browser, url)
    count_answers(browser)
    pen = 24 / 280  # the pen's width on the pad: the shapes' boxes, pen and all, alike
    seen = []
    for count, (left, top, height) in enumerate(((0.05, 0.05, 0.25), (0.3, 0.15, 0.7)), 1):
        filled(browser, left, top, 0.6 * (height + pen) - pen, height)
        answered(browser, count)
        seen.append((canvas(browser), shown(browser)))
        element(By.ID, "clear-drawing").click()
    (small, small_answer), (large, large_answer) = seen
    assert np.abs(small.astype(int) - large).mean() < 10, (small, large)
    assert small_answer == large_answer == labels(stub, large)
