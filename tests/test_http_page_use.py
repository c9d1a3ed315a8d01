"""The web page as a person uses it, in a real headless chromium: behind a proxy that answers
for the server, and before, while and after a picture is answered."""

import base64
import contextlib
import shutil

import pytest
import requests
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from common.pictures import load_png
from tests.conftest import tiny_classifier
from tests.http_helpers import (
    ARTIFACTS,
    QuietHandler,
    http_server,
    http_settings,
    served_on_a_thread,
)
from tests.test_http_page import (
    answered,
    browser,
    labels,
    opened_with_models,
    pytestmark,
    served,
    shown,
    wait_for,
)
from training.repository import write_version

__all__ = ["browser", "pytestmark", "served"]  # the fixtures this module's tests take; its skip

NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>"
             b"502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n"
             b"</html>\r\n")

KUBECTL_PROXY_503 = (b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
                     b'"message":"no endpoints available for service \\"fmnist\\"",'
                     b'"reason":"ServiceUnavailable","code":503}')


@contextlib.contextmanager
def proxy_answering(url: str, status: int, page: bytes):
    """A proxy in front of ``url``'s server that serves the page and answers every other path
    itself, with ``status`` and ``page``, HTML or JSON (nginx's 502 when the server is down, a
    sign-in page, kubectl proxy's Status)."""

    class Proxy(QuietHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/":
                answer = requests.get(url, timeout=10)
                status_, body = answer.status_code, answer.content
            else:
                status_, body = status, page
            self.send_response(status_)
            self.send_header("Content-Type",
                             "application/json" if body.startswith(b"{") else "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815

    with served_on_a_thread(Proxy) as proxy:
        yield f"{proxy}/"


@pytest.mark.parametrize("proxys", [
    (502, NGINX_502, "the proxy answered 502 Bad Gateway: is the server behind it running?"),
    (200, b"<html><body>Sign in</body></html>",
     "an answer that is not the server's (HTTP 200 OK, text/html): a proxy's page?"),
    (503, KUBECTL_PROXY_503,  # its pod gone, under kubectl proxy (README, "The page")
     "the proxy answered 503 Service Unavailable: is the server behind it running?")])
def test_a_proxys_page_is_said_in_one_clear_line(served, browser, test_set, tmp_path, proxys):
    """nginx's 502 page showed "HTTP 502" alone; a proxy's sign-in page answered with 200
    showed "Cannot read properties of undefined (reading 'map')", the script's own failure;
    kubectl proxy's JSON 503, not the server's JSON, showed "HTTP 503"."""
    (url, _), (status, page, said) = served, proxys
    picture = tmp_path / "boot.png"
    Image.fromarray(test_set[0][0]).save(picture)
    with proxy_answering(url, status, page) as page_url:
        browser.get(page_url)
        element = browser.find_element
        wait_for(browser, lambda: element(By.ID, "error").text)
        assert element(By.ID, "error").text == said
        element(By.ID, "random").click()  # which takes the last error away at once
        wait_for(browser, lambda: element(By.ID, "error").text)
        assert element(By.ID, "error").text == said
        element(By.ID, "file").send_keys(str(picture))
        wait_for(browser, lambda: "boot.png" in element(By.ID, "error").text)
        assert element(By.ID, "error").text == "boot.png: " + said


def test_the_model_list_names_the_servers_default(model_repository, browser):
    """The model list's first choice, what the page starts with, read "server default": which
    model that is was said only once an answer came."""
    with http_server(http_settings(model_repository, default_model="softmax")) as (_, url):
        element = opened_with_models(browser, url)
        wait_for(browser, lambda: "(" in element(By.ID, "model").text)
        first = element(By.CSS_SELECTOR, "#model option")
        assert (first.text, first.get_attribute("value")) == ("server default (softmax)", "")


def test_no_empty_picture_or_answers_stand_before_an_image_or_after_an_error(served, browser,
                                                                            test_set, tmp_path):
    """Before the first image, and after a file that is no picture, a black square stood under
    the controls beside the headings "model" and "baseline" over nothing: an answer seemed
    to be missing."""
    url, _ = served
    element = opened_with_models(browser, url)
    answer_parts = ("image", "model-name", "baseline-name")
    assert [element(By.ID, part).is_displayed() for part in answer_parts] == [False] * 3
    picture, notes = tmp_path / "boot.png", tmp_path / "notes.txt"
    Image.fromarray(test_set[0][0]).save(picture)
    notes.write_text("not a picture")
    element(By.ID, "file").send_keys(str(picture))
    wait_for(browser, lambda: element(By.ID, "model-label").get_attribute("data-label"))
    assert [element(By.ID, part).is_displayed() for part in answer_parts] == [True] * 3
    element(By.ID, "file").send_keys(str(notes))
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert [element(By.ID, part).is_displayed() for part in answer_parts] == [False] * 3


@pytest.mark.parametrize("width", [900, 360])
def test_the_token_box_stays_where_it_is_as_answers_come_and_go(served, browser, test_set,
                                                                tmp_path, width):
    """The first answer pushed the token box down by the picture's height, and an error took
    it back up: a person about to open it, or typing a token in it, found it gone."""
    url, _ = served
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": 740, "deviceScaleFactor": 1, "mobile": width < 600})
    try:
        element = opened_with_models(browser, url)
        element(By.ID, "token-box").click()
        picture, notes = tmp_path / "boot.png", tmp_path / "notes.txt"
        Image.fromarray(test_set[0][0]).save(picture)
        notes.write_text("not a picture")
        places = [element(By.ID, "token").rect]
        answered(browser, picture)
        places.append(element(By.ID, "token").rect)
        browser.save_screenshot(str(ARTIFACTS / f"http_page_token_box_{width}.png"))
        element(By.ID, "file").send_keys(str(notes))
        wait_for(browser, lambda: element(By.ID, "error").text)
        places.append(element(By.ID, "token").rect)
        assert places == places[:1] * 3
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_model_list_follows_a_server_restarted_with_other_models(repository_copy, browser):
    """The model list was read once, as the page opened: a server restarted with other models
    left it offering the old ones (softmax, which the server then refused) and not the new."""
    settings = http_settings(repository_copy)
    with http_server(settings) as (_, url):
        element = opened_with_models(browser, url)
        Select(element(By.ID, "model")).select_by_value("softmax")
    def listed() -> list[str]:  # in one read: the page may rebuild the list between two
        return sorted(browser.execute_script(
            "return [...document.getElementById('model').options].map(o => o.value)"))

    shutil.rmtree(repository_copy / "softmax")
    write_version(repository_copy, "linear", tiny_classifier(5), {"description": "new"})
    with http_server(settings) as (_, again):
        assert again == url
        element(By.ID, "random").click()  # refused: no softmax now
        wait_for(browser, lambda: "linear" in listed())
        assert "softmax" in element(By.ID, "error").text
        assert listed() == ["", "baseline", "linear", "mlp"]
        assert element(By.ID, "model").get_attribute("value") == ""
    write_version(repository_copy, "wide", tiny_classifier(6), {"description": "newer"})
    with http_server(settings):
        page = browser.current_window_handle
        browser.switch_to.new_window("tab")  # the person looks at another tab, and comes back
        browser.close()
        browser.switch_to.window(page)
        wait_for(browser, lambda: "wide" in listed())
        assert listed() == ["", "baseline", "linear", "mlp", "wide"]


def test_a_picture_pasted_is_answered(served, browser, test_set, tmp_path):
    """A picture copied (from another page, a screenshot tool) and pasted with Ctrl+V did
    nothing: the page had only the picker and the drop zone."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    url, stub = served
    picture = tmp_path / "boot.png"
    Image.fromarray(test_set[0][0]).save(picture)
    element = opened_with_models(browser, url)
    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    copied = browser.execute_async_script("""const [data, done] = arguments;
        const png = new Blob([Uint8Array.from(atob(data), (c) => c.charCodeAt(0))],
                             {type: "image/png"});
        navigator.clipboard.write([new ClipboardItem({"image/png": png})])
            .then(() => done("copied"), (error) => done(String(error)));""",
        base64.b64encode(picture.read_bytes()).decode())
    assert copied == "copied"
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("v").key_up(Keys.CONTROL).perform()
    wait_for(browser, lambda: element(By.ID, "model-label").get_attribute("data-label")
             or element(By.ID, "error").text)
    assert element(By.ID, "error").text == ""
    assert shown(browser) == labels(stub, load_png(picture))


def dropped(browser, target: str, paths: list) -> None:
    """``paths`` dragged and dropped on the element ``target``, as the browser sends a person's
    drag."""
    where = browser.execute_script("const box = document.getElementById(arguments[0])"
                                   ".getBoundingClientRect(); return [box.x + box.width / 2,"
                                   " box.y + box.height / 2]", target)
    for kind in ("dragEnter", "dragOver", "drop"):
        browser.execute_cdp_cmd("Input.dispatchDragEvent", {
            "type": kind, "x": where[0], "y": where[1],
            "data": {"items": [], "files": [str(path) for path in paths],
                     "dragOperationsMask": 1}})


def test_a_picture_dropped_on_the_last_one_is_answered(served, browser, test_set, tmp_path):
    """Only the dashed zone took a drop: a picture dropped where the last one stood did
    nothing (and a desktop browser opens a file dropped there in the page's place)."""
    url, stub = served
    element = opened_with_models(browser, url)
    for target, index in (("drop", 0), ("image", 1)):
        picture = tmp_path / f"{target}.png"
        Image.fromarray(test_set[0][index]).save(picture)
        dropped(browser, target, [picture])
        wait_for(browser, lambda name=picture.name: name in element(By.ID, "truth").text
                 or element(By.ID, "error").text)
        assert shown(browser) == labels(stub, load_png(picture))


def test_what_is_said_of_an_answer_names_the_image_and_if_each_model_is_right(
        served, browser, test_set, tmp_path):
    """A screen reader heard "mlp v2: Sneaker 18.9%; baseline v1 (baseline): Dress 21.6%"
    alone: not which image, nor its true label and each model's mark, which the eye sees."""
    url, _ = served
    element = opened_with_models(browser, url)
    spoken = element(By.ID, "spoken")
    element(By.ID, "random").click()
    wait_for(browser, lambda: spoken.get_attribute("textContent"))
    truth = element(By.ID, "truth")
    marks = [", wrong" if "wrong" in element(By.ID, f"{side}-label").get_attribute("class")
             else ", right" for side in ("model", "baseline")]
    said = spoken.get_attribute("textContent")
    assert said.startswith(f"{truth.text}. "), said
    for side, mark in zip(("model", "baseline"), marks, strict=True):
        name = element(By.ID, f"{side}-name").text
        first = element(By.ID, f"{side}-bars").find_element(By.CLASS_NAME, "bar").text
        assert f"{name}: {first}{mark}" in said, said
    picture = tmp_path / "boot.png"
    Image.fromarray(test_set[0][0]).save(picture)
    element(By.ID, "file").send_keys(str(picture))
    wait_for(browser, lambda: "boot.png" in spoken.get_attribute("textContent"))
    assert "right" not in spoken.get_attribute("textContent")  # a file has no true label


def contrast(first: str, second: str) -> float:
    """WCAG's contrast ratio of two CSS ``rgb(...)`` colours."""
    def luminance(colour: str) -> float:
        channels = [int(part) / 255 for part in colour[colour.index("(") + 1:-1].split(",")[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    lighter, darker = sorted((luminance(first), luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_the_drop_zone_stands_out_for_weak_eyes(served, browser):
    """The drop zone, the page's main control, was marked by a #999 dashed line on white:
    2.85:1, under the 3:1 WCAG asks of what shows where a control is."""
    url, _ = served
    browser.get(url)
    border, page = browser.execute_script(
        "return [getComputedStyle(document.getElementById('drop')).borderTopColor, "
        "getComputedStyle(document.body).backgroundColor]")
    assert contrast(border, "rgb(255, 255, 255)" if page == "rgba(0, 0, 0, 0)" else page) >= 3


def test_the_keyboards_place_on_the_drop_zone_stands_out_for_weak_eyes(served, browser):
    """The file picker, reached with Tab, showed as a #2a6 outline round the drop zone: 2.996:1
    on white, under the 3:1 WCAG asks of what shows where the keyboard is."""
    url, _ = served
    browser.get(url)
    outline = browser.execute_script("document.getElementById('file').focus(); const style = "
                                     "getComputedStyle(document.getElementById('drop')); "
                                     "return [style.outlineStyle, style.outlineColor]")
    assert outline[0] == "solid" and contrast(outline[1], "rgb(255, 255, 255)") >= 3, outline
