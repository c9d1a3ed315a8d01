"""The web page as a person meets it when something is wrong, in a real headless browser: a
refused or missing token, a server gone, a file that is no picture, a long file name on a
phone, a path under a proxy, a near-certain answer; and with a screen reader, which needs every
control named and each answer announced."""

import contextlib

import numpy as np
import onnx
import requests
from onnx import numpy_helper
from PIL import Image
from selenium.webdriver.common.by import By

from tests.conftest import tiny_classifier
from tests.http_helpers import QuietHandler, http_server, http_settings, served_on_a_thread
from tests.test_http_page import browser, opened_with_models, served, wait_for
from training.repository import write_version

__all__ = ["browser", "served"]  # the fixtures this module's tests take


def test_every_control_has_a_name_a_screen_reader_says(served, browser):
    """The token box's field had none: a screen reader said "edit text, password" alone."""
    url, _ = served
    element = opened_with_models(browser, url)
    element(By.ID, "token-box").click()
    unnamed = [control.get_attribute("id") for control in browser.find_elements(
        By.CSS_SELECTOR, "input, select, button, summary") if not control.accessible_name]
    assert unnamed == []


def test_a_refused_token_is_said_in_the_pages_words(model_repository, browser):
    """A guarded server's page said "missing or invalid bearer token (authorization: Bearer
    TOKEN)", a header its user never writes, whether a token had been typed or not."""
    with http_server(http_settings(model_repository, auth_token="page-secret")) as (_, url):
        browser.get(url)
        element = browser.find_element
        wait_for(browser, lambda: element(By.ID, "error").text)
        assert element(By.ID, "error").text == (
            'this server asks for a token: type it under "Bearer token" above')
        assert browser.switch_to.active_element.get_attribute("id") == "token"
        element(By.ID, "token").send_keys("wrong-secret\t")
        wait_for(browser, lambda: "refused" in element(By.ID, "error").text)
        assert element(By.ID, "error").text == (
            'the server refused this token: check it under "Bearer token" above')


def test_a_server_gone_is_said_plainly(model_repository, browser):
    """A server stopped under the page showed the browser's "Failed to fetch"."""
    with http_server(http_settings(model_repository)) as (_, url):
        element = opened_with_models(browser, url)
    element(By.ID, "random").click()
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert element(By.ID, "error").text == (
        f"no answer from the server at {url}: is it still running?")


def come_back(browser) -> None:
    """The person comes back to the page from another tab."""
    page = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.close()
    browser.switch_to.window(page)


def test_a_server_back_takes_away_the_model_lists_no_answer(repository_copy, browser):
    """Coming back to the page while the server was down said "no answer ...: is it still
    running?" (the model list is asked for again); coming back once it ran again, the list
    came, new models and all, and the line stayed, saying a running server was gone."""
    settings = http_settings(repository_copy)
    with http_server(settings) as (_, url):
        element = opened_with_models(browser, url)
    come_back(browser)
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert element(By.ID, "error").text == (
        f"no answer from the server at {url}: is it still running?")
    write_version(repository_copy, "wide", tiny_classifier(6), {"description": "new"})
    with http_server(settings):
        come_back(browser)
        wait_for(browser, lambda: "wide" in browser.execute_script(
            "return [...document.getElementById('model').options].map(o => o.value)"))
        assert element(By.ID, "error").text == ""


def test_each_answer_is_announced(served, browser):
    """The answers appeared without a word to a screen reader: nothing on the page that shows
    them is a live region."""
    url, _ = served
    element = opened_with_models(browser, url)
    element(By.ID, "random").click()
    wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
    spoken = browser.execute_script(
        "return [...document.querySelectorAll('[role=status], [aria-live]')]"
        ".map((region) => region.textContent).join(' | ')")
    model = element(By.ID, "model-name").text
    first = element(By.ID, "model-bars").find_element(By.CLASS_NAME, "bar").text
    assert f"{model}: {first}" in spoken, spoken


def test_a_file_that_is_no_picture_is_named_in_the_pages_words(served, browser, tmp_path):
    """A text file picked showed 'body: expected a PNG, JPEG, GIF, BMP, WEBP image, or JSON
    {"images": [[784 integers 0..255], ...]} (...)', the API's words, without the file's name;
    one over the server's limit, its 413 in the API's words."""
    url, _ = served
    element = opened_with_models(browser, url)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    element(By.ID, "file").send_keys(str(notes))
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert element(By.ID, "error").text == (
        "notes.txt: not a picture the page can read (PNG, JPEG, GIF, BMP, WebP, AVIF, ICO)")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(5 * 2**20))
    element(By.ID, "file").send_keys(str(big))
    wait_for(browser, lambda: "big.bin" in element(By.ID, "error").text)
    # not "request body: 5242880 bytes, over the server's limit of 4194304 (--max-message-bytes)"
    assert element(By.ID, "error").text == (
        "big.bin: not a picture the page can read (PNG, JPEG, GIF, BMP, WebP, AVIF, ICO)")


def test_a_long_file_name_keeps_to_a_phones_width(served, browser, test_set, tmp_path):
    """A long file name, under the picture or in an error, ran past a 360-pixel-wide phone's
    screen: the whole page scrolled sideways."""
    url, _ = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": True})
    try:
        element = opened_with_models(browser, url)
        name = "IMG_20261203_101010_0001_" * 4
        picture, notes = tmp_path / f"{name}.png", tmp_path / f"{name}.txt"
        Image.fromarray(test_set[0][2]).save(picture)
        notes.write_text("not a picture")
        widths = []
        for path, shown_in in ((picture, "truth"), (notes, "error")):
            element(By.ID, "file").send_keys(str(path))
            wait_for(browser, lambda shown_in=shown_in: name in element(By.ID, shown_in).text)
            widths.append(browser.execute_script(
                "return document.documentElement.scrollWidth"))
        assert widths == [360, 360]
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_picture_is_an_image_to_a_screen_reader(served, browser):
    """The canvas had a label but no role: ARIA names no plain canvas, so its label went
    unsaid."""
    url, _ = served
    element = opened_with_models(browser, url)
    element(By.ID, "random").click()  # the picture is shown with its first answer
    wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
    picture = element(By.ID, "image")
    assert (picture.aria_role, picture.accessible_name) == (  # Chromium's name for role img
        "image", "the 28x28 image the model sees")


@contextlib.contextmanager
def under_a_path(url: str, prefix: str):
    """``url``'s server behind a reverse proxy that serves it under ``prefix``, as ``kubectl
    proxy`` serves a Service under /api/v1/namespaces/N/services/S:http/proxy/."""

    class Proxy(QuietHandler):
        def forward(self):
            if not self.path.startswith(prefix):
                self.send_error(404)
                return
            answer = requests.request(
                self.command, url + self.path[len(prefix) - 1:], timeout=10,
                data=self.rfile.read(int(self.headers.get("Content-Length") or 0)),
                headers={name: self.headers[name] for name in ("Content-Type", "Authorization")
                         if name in self.headers})
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers["Content-Type"])
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = forward  # noqa: N815 (http.server's names)

    with served_on_a_thread(Proxy) as proxy:
        yield f"{proxy}{prefix}"


def test_the_page_works_under_a_path(served, browser):
    """Under kubectl proxy's path the page asked for /v1/models at the proxy's root: "no
    endpoint", no models, no answers."""
    url, _ = served
    with under_a_path(url, "/api/v1/namespaces/fmnist/services/fashion-mnist:http/proxy/") \
            as page:
        browser.get(page)
        element = browser.find_element
        wait_for(browser, lambda: element(By.ID, "error").text or len(
            element(By.ID, "model").find_elements(By.TAG_NAME, "option")) > 1)
        element(By.ID, "random").click()
        wait_for(browser, lambda: element(By.ID, "error").text
                 or element(By.ID, "model-label").get_attribute("data-label"))
        assert element(By.ID, "error").text == ""


def test_a_near_certain_answer_is_not_shown_as_certain(served, browser, model_repository):
    """A probability of 0.9999996 was drawn "100.0%" beside "0.0%": a certainty, and an
    impossibility, that the model did not say."""
    url, _ = served
    version = requests.get(f"{url}/v1/models/mlp", timeout=5).json()["version"]
    weights = next(numpy_helper.to_array(tensor) for tensor in onnx.load(
        model_repository / "mlp" / str(version) / "model.onnx").graph.initializer
        if tensor.name == "weights")  # tests/conftest.py's tiny classifier: [784, 10]
    # lit where they speak for class 0 more than for the others: an image the default model is
    # near-certain of
    pixels = np.where(weights[:, 0] > weights[:, 1:].mean(axis=1), 255, 0).tolist()
    top = requests.post(f"{url}/v1/classify", json={"images": [pixels]},
                        timeout=5).json()["results"][0]["model"]["top"]
    assert top[0]["probability"] > 0.9995 and top[-1]["probability"] < 0.0005, top
    element = opened_with_models(browser, url)
    browser.execute_script("classifyTestImage(arguments[0])",
                           {"index": 0, "label": 0, "class_name": "drawn", "pixels": pixels})
    wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
    texts = [bar.text.rsplit(" ", 1)[1] for bar in
             element(By.ID, "model-bars").find_elements(By.CLASS_NAME, "bar")]
    assert (texts[0], texts[-1]) == (">99.9%", "<0.1%"), texts


def test_the_answers_keep_to_the_narrowest_phones_width(served, browser):
    """On a 280-pixel-wide screen (a folding phone's outer one) the answers' bars ran 16 pixels
    past its edge: the whole page scrolled sideways."""
    url, _ = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 280, "height": 653, "deviceScaleFactor": 1, "mobile": True})
    try:
        element = opened_with_models(browser, url)
        element(By.ID, "random").click()
        wait_for(browser, lambda: element(By.ID, "model-label").get_attribute("data-label"))
        assert browser.execute_script("return document.documentElement.scrollWidth") == 280
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_long_model_name_keeps_to_a_phones_width(repository_copy, browser):
    """The model list is as wide as its longest name: one of 43 characters ran 29 pixels past a
    320-pixel-wide phone's screen, and the whole page scrolled sideways."""
    name = "fashion-mnist-mlp-experimental-wide-2026-12"
    write_version(repository_copy, name, tiny_classifier(7), {"description": "long"})
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 320, "height": 653, "deviceScaleFactor": 1, "mobile": True})
    try:
        with http_server(http_settings(repository_copy)) as (_, url):
            element = opened_with_models(browser, url)
            assert name in element(By.ID, "model").text
            assert browser.execute_script("return document.documentElement.scrollWidth") == 320
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_nothing_moves_when_the_model_list_comes(served, browser):
    """On a phone the list's first choice grew from "server default" to "server default (mlp)"
    when the list came, and pushed "Random test image", the drop zone and all under them a line
    down, from under the finger about to press them."""
    url, _ = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": True})
    held = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": """
        const original = window.fetch, list = new Promise((done) => { window.letGo = done; });
        window.fetch = (path, options) => String(path).includes("v1/models")
            ? list.then(() => original(path, options)) : original(path, options);"""})
    try:
        browser.get(url)
        element = browser.find_element
        places = [element(By.ID, "drop").rect]
        browser.execute_script("window.letGo()")
        wait_for(browser, lambda: "(mlp)" in element(By.ID, "model").text)
        assert element(By.ID, "drop").rect == places[0]
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", held)
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_finger_finds_each_control_big_enough(served, browser):
    """On a touch screen the model list, "Random test image", the token box's heading and field
    and the "invert" box's line were 19 to 21 pixels high (the box itself 13): under the 44 a
    finger needs (Apple's and Android's guides)."""
    url, _ = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 360, "height": 740, "deviceScaleFactor": 3, "mobile": True})
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    try:
        element = opened_with_models(browser, url)
        element(By.TAG_NAME, "summary").click()
        heights = browser.execute_script(
            "return ['#model', '#random', 'label:has(> #invert)', 'summary', '#token']"
            ".map((control) => "
            "[control, document.querySelector(control).getBoundingClientRect().height])")
        assert [name for name, height in heights if height < 44] == [], heights
    finally:
        browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
