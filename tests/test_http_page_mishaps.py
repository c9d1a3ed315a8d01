"""The web page when what goes wrong is not the server: a file changed on disk after it was
picked, a token pasted with a character no header carries, a proxy's JSON error; in a real
headless chromium."""

import contextlib
import threading

import grpc
import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.http_helpers import http_server, http_settings
from tests.test_http_page import answered, browser, opened_with_models, pytestmark, served, wait_for
from tests.test_http_page_errors import come_back
from tests.test_http_page_use import dropped
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
    answered(browser, boot)
    if change == "edited":
        Image.new("L", (28, 28), 200).save(boot)
    else:
        boot.unlink()
    element(By.ID, "invert").click()
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert element(By.ID, "error").text == (
        "boot.png: the file changed or went since it was picked: pick it again")


def test_a_token_no_header_carries_is_named_not_the_server(model_repository, browser):
    """A token pasted with a typographic dash (or an accent, a zero-width space): fetch refuses
    to send it, and the page said "no answer from the server ...: is it still running?"."""
    with http_server(http_settings(model_repository, auth_token="page-secret")) as (_, url):
        browser.get(url)
        element = browser.find_element
        wait_for(browser, lambda: element(By.ID, "token-box").get_attribute("open"))
        element(By.ID, "token").send_keys("page\u2013secret\t")
        wait_for(browser, lambda: "asks" not in element(By.ID, "error").text)
        assert element(By.ID, "error").text == (
            "the token holds a character other than printable ASCII (a typographic dash or "
            'quote?): check it under "Bearer token" above')


def test_a_busy_server_is_said_in_the_pages_words(model_repository, browser):
    """A server at --max-concurrent-calls answered 429 "server overloaded: 1 calls in flight in
    this process (--max-concurrent-calls); retry with backoff or on another replica", words for
    a program, which the page showed as they were."""
    with http_server(http_settings(model_repository, max_concurrent_calls=1)) as (server, url):
        element = opened_with_models(browser, url)
        with a_call_in_flight(server):
            element(By.ID, "random").click()
            wait_for(browser, lambda: element(By.ID, "error").text)
            assert element(By.ID, "error").text == (
                "the server is too busy to take this now: try again in a moment")


def test_a_server_shutting_down_is_said_in_the_pages_words(model_repository, browser):
    """A server stopped (Ctrl-C) refuses new calls while it drains those in flight, with 503
    "server is shutting down; retry on another replica": words for a program behind a
    balancer, which the page showed as they were, to a person with one server."""
    with http_server(http_settings(model_repository, grace_period=10.0)) as (server, url):
        element = opened_with_models(browser, url)
        with a_call_in_flight(server):
            stopping = threading.Thread(target=server.stop)
            stopping.start()
            wait_for(browser, lambda: not server.admission.accepting)
            element(By.ID, "random").click()
            wait_for(browser, lambda: element(By.ID, "error").text)
            assert element(By.ID, "error").text == (
                "the server is shutting down: try again once it is back")
        stopping.join(10)


@contextlib.contextmanager
def a_call_in_flight(server):
    """One ClassifyStream call on ``server``, held open for as long as the block lasts."""
    done = threading.Event()

    def held():
        yield pb.ClassifyRequest(images=[bytes(784)])
        done.wait()

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = pb_grpc.ClassifierStub(channel).ClassifyStream(held())
        try:
            next(stream)
            yield
        finally:
            done.set()


def test_a_picture_refused_for_its_token_is_answered_once_the_token_is_given(
        model_repository, browser, test_set, tmp_path):
    """A picture dropped before the token was typed was refused ("this server asks for a
    token"); the token typed, the page answered nothing till the picture came again."""
    (boot,) = pictures(test_set, tmp_path, "boot.png")
    with http_server(http_settings(model_repository, auth_token="page-secret")) as (_, url):
        browser.get(url)
        element = browser.find_element
        wait_for(browser, lambda: element(By.ID, "error").text)
        element(By.ID, "file").send_keys(str(boot))
        wait_for(browser, lambda: "boot.png" in element(By.ID, "error").text)
        assert element(By.ID, "error").text == (
            'boot.png: this server asks for a token: type it under "Bearer token" above')
        element(By.ID, "token").send_keys("page-secret\n")
        wait_for(browser, lambda: "boot.png" in element(By.ID, "truth").text)
        assert element(By.ID, "error").text == ""


def test_a_picture_over_a_lower_body_limit_is_sent_again_scaled_down(model_repository,
                                                                     browser, test_set,
                                                                     tmp_path):
    """A 1.7 MB picture, under the 2 MiB the page sends as it is, to a server started with
    --max-message-bytes 1 MiB (or behind an ingress's 1 MiB limit): the page said "request
    body: 1777332 bytes, over the server's limit of 1048576 (--max-message-bytes)" of a picture
    it would have scaled down had it been larger."""
    photo = tmp_path / "photo.png"
    noise = np.random.default_rng(0).integers(0, 8, (1120, 1120, 3), dtype=np.uint8)
    big = np.minimum(np.kron(test_set[0][2], np.ones((40, 40), np.uint8)), 247)[:, :, None]
    Image.fromarray((big + noise).astype(np.uint8)).save(photo)
    assert 2**20 < photo.stat().st_size < 2 * 2**20
    settings = http_settings(model_repository, max_message_bytes=2**20)
    with http_server(settings) as (_, url):
        element = opened_with_models(browser, url)
        element(By.ID, "file").send_keys(str(photo))
        wait_for(browser, lambda: "photo.png" in element(By.ID, "truth").text
                 or element(By.ID, "error").text)
        assert element(By.ID, "error").text == ""


def test_a_picture_cut_short_is_said_to_be_one(served, browser, test_set, tmp_path):
    """Half a PNG (a download not finished) was "not a picture the page can read (PNG, JPEG,
    ...)": of a PNG, where the server had said what it was."""
    url, _ = served
    (boot,) = pictures(test_set, tmp_path, "boot.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(boot.read_bytes()[:boot.stat().st_size // 2])
    element = opened_with_models(browser, url)
    element(By.ID, "file").send_keys(str(cut))
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert element(By.ID, "error").text == (
        "cut.png: a damaged PNG image, or cut short (image file is truncated)")


def test_a_folder_dropped_is_said_to_be_one(served, browser, test_set, tmp_path):
    """A folder of pictures dropped on the page: the browser cannot read a folder as a file,
    and the page said it "changed or went since it was picked"."""
    url, _ = served
    folder = tmp_path / "shoes"
    folder.mkdir()
    pictures(test_set, folder, "boot.png")
    element = opened_with_models(browser, url)
    dropped(browser, "drop", [folder])
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert element(By.ID, "error").text == "shoes: a folder: drop the pictures in it one by one"


def test_of_several_pictures_dropped_the_one_answered_is_said(served, browser, test_set,
                                                               tmp_path):
    """Three pictures dropped at once: the first was answered, and nothing said that the
    others were left."""
    url, _ = served
    boot, trouser, pullover = pictures(test_set, tmp_path, "boot.png", "trouser.png",
                                       "pullover.png")
    element = opened_with_models(browser, url)
    dropped(browser, "drop", [boot, trouser, pullover])
    wait_for(browser, lambda: "boot.png" in element(By.ID, "truth").text)
    assert element(By.ID, "truth").text == (
        "boot.png, the first of 3 files (one at a time), as the model sees it")


def test_a_device_offline_is_said_to_be_offline(served, browser):
    """A phone that lost its network: the page said "no answer from the server ...: is it
    still running?" of a server that was, where the browser knew it had no network; and the
    network back, the model list's error stayed till the person left the page and came back."""
    url, _ = served
    element = opened_with_models(browser, url)

    def offline(offline: bool) -> None:
        browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})

    browser.execute_cdp_cmd("Network.enable", {})
    try:
        offline(True)
        element(By.ID, "random").click()
        wait_for(browser, lambda: element(By.ID, "error").text)
        assert element(By.ID, "error").text == "no network: this device is offline"
        browser.execute_script("loadModels()")  # as when the person comes back to the page
        wait_for(browser, lambda: browser.execute_script("return errorOf === 'listing'"))
        offline(False)
        wait_for(browser, lambda: element(By.ID, "error").text == "")
    finally:
        offline(False)
        browser.execute_cdp_cmd("Network.disable", {})


def test_what_a_server_gone_did_not_answer_is_answered_once_it_is_back(model_repository,
                                                                        browser, test_set,
                                                                        tmp_path):
    """A server restarted under the page: the model chosen (by keyboard) brought "no answer
    ...: is it still running?" and the picture went; the server back and the person back to
    the page, the line still said so, and choosing the model again did nothing: the picture
    had to be picked again."""
    (boot,) = pictures(test_set, tmp_path, "boot.png")
    settings = http_settings(model_repository)
    with http_server(settings) as (_, url):
        element = opened_with_models(browser, url)
        answered(browser, boot)
    element(By.ID, "model").send_keys(Keys.ARROW_DOWN)  # the next model, as a keyboard does
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert "is it still running?" in element(By.ID, "error").text
    with http_server(settings):
        come_back(browser)
        wait_for(browser, lambda: "boot.png" in element(By.ID, "truth").text)
        assert element(By.ID, "error").text == ""
        chosen = element(By.ID, "model").get_attribute("value")
        assert chosen and element(By.ID, "model-name").text.startswith(chosen + " v")
