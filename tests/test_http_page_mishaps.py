"""The web page when what goes wrong is not the server: a file changed on disk after it was
picked, a token pasted with a character no header carries, a proxy's JSON error; in a real
headless chromium."""

import pytest
from PIL import Image
from selenium.webdriver.common.by import By

from tests.test_http_page import browser, opened_with_models, pytestmark, served, wait_for
from tests.test_http_page_wait import pictures

__all__ = ["browser", "pytestmark", "served"]  # the fixtures this module's tests take; its skip


@pytest.mark.parametrize("change", ["edited", "deleted"])
def test_a_file_changed_since_it_was_picked_is_named_not_the_server(served, browser, test_set,
                                                                    tmp_path, change):
    """A picture edited (or deleted) after it was picked, then "invert" ticked to see it again:
    the browser cannot read it any more, and the page said "no answer from the server ...: is
    it still running?" of a server that was running."""
    url, _ = served
    (boot,) = pictures(test_set, tmp_path, "boot.png")
    element = opened_with_models(browser, url)
    element(By.ID, "file").send_keys(str(boot))
    wait_for(browser, lambda: "boot.png" in element(By.ID, "truth").text)
    if change == "edited":
        Image.new("L", (28, 28), 200).save(boot)
    else:
        boot.unlink()
    element(By.ID, "invert").click()
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert element(By.ID, "error").text == (
        "boot.png: the file changed or went since it was picked: pick it again")
