"""The web page as a person meets it when something is wrong, in a real headless browser: a
refused or missing token, a server gone, a file that is no picture; and with a screen reader,
which needs every control named and each answer announced."""

from selenium.webdriver.common.by import By

from tests.test_http_page import browser, opened_with_models, served

__all__ = ["browser", "served"]  # the fixtures this module's tests take


def test_every_control_has_a_name_a_screen_reader_says(served, browser):
    """The token box's field had none: a screen reader said "edit text, password" alone."""
    url, _ = served
    element = opened_with_models(browser, url)
    element(By.ID, "token-box").click()
    unnamed = [control.get_attribute("id") for control in browser.find_elements(
        By.CSS_SELECTOR, "input, select, button, summary") if not control.accessible_name]
    assert unnamed == []
