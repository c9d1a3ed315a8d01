"""Pictures the browser reads but the server does not decode (AVIF, ICO), picked on the page in
chromium: answered, not refused in the API's words."""

import numpy as np
import pytest
from PIL import Image, features
from selenium.webdriver.common.by import By

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


@pytest.mark.parametrize("suffix", [
    "ico", pytest.param("avif", marks=pytest.mark.skipif(not features.check("avif"),
                                                         reason="Pillow writes no AVIF here"))])
def test_a_picture_the_browser_reads_but_the_server_does_not_is_answered(served, browser,
                                                                        test_set, tmp_path,
                                                                        suffix):
    """An AVIF or ICO picture went as it was, and the page showed the server's refusal of the
    body: 'expected a PNG, JPEG, GIF, BMP, WEBP image, or JSON {"images": ...}'."""
    url, stub = served
    element = opened_with_models(browser, url)
    picture = tmp_path / f"boot.{suffix}"
    Image.fromarray(np.kron(test_set[0][0], np.ones((2, 2), np.uint8))).save(
        picture, **({"quality": 100} if suffix == "avif" else {}))
    element(By.ID, "file").send_keys(str(picture))
    wait_for(browser, lambda: picture.name in element(By.ID, "truth").text
             or element(By.ID, "error").text)
    assert element(By.ID, "error").text == ""
    if suffix == "ico":  # lossless: the very pixels Pillow reads
        assert np.array_equal(canvas(browser), load_png(picture))
        assert shown(browser) == labels(stub, load_png(picture))
    else:  # lossy, and decoded by another library: near Pillow's pixels
        assert np.abs(canvas(browser).astype(int) - load_png(picture)).mean() < 8


def test_the_file_picker_offers_every_picture_the_page_reads(served, browser, test_set,
                                                             tmp_path):
    """The picker's accept list named PNG, JPEG, GIF, WebP and BMP alone: AVIF and ICO files,
    which the page converts, were hidden in the system's file dialog."""
    url, _ = served
    element = opened_with_models(browser, url)
    accepted = [token.strip().lower() for token in
                element(By.ID, "file").get_attribute("accept").split(",")]
    probe = browser.execute_script("const probe = document.createElement('input'); "
                                   "probe.type = 'file'; return document.body.appendChild(probe)")
    missed = []
    for suffix in ("png", "jpeg", "gif", "bmp", "webp", "ico", "avif"):
        if suffix == "avif" and not features.check("avif"):
            continue
        picture = tmp_path / f"boot.{suffix}"
        Image.fromarray(test_set[0][0]).save(picture)
        probe.send_keys(str(picture))  # the type chromium gives such a file
        kind = browser.execute_script("return arguments[0].files[0].type", probe)
        probe.clear()
        # the HTML standard's match: the file's MIME type, its type's wildcard, or its extension
        if not {kind, kind.split("/")[0] + "/*", f".{suffix}"} & set(accepted):
            missed.append((picture.name, kind))
    assert missed == [], accepted
