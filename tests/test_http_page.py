"""The web page in a real headless browser (Debian's chromium and chromium-driver, through
Selenium): a random test image and a picked PNG are answered with the label the gRPC API gives
for the same image, a file that is no image gives one readable error line; a screenshot is
saved to .work/artifacts/http_page.png to look at."""

import shutil

import grpc
import numpy as np
import pytest
import requests
from PIL import Image
from selenium.webdriver.common.by import By

from common.pictures import load_png
from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from tests.http_helpers import ARTIFACTS, http_server, http_settings

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs apt-get install chromium chromium-driver")
WAIT_S = 20


@pytest.fixture(scope="module")
def served(model_repository):
    with (http_server(http_settings(model_repository)) as (server, url),
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        yield url, pb_grpc.ClassifierStub(channel)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=900,640"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(browser, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S).until(lambda _: condition())


def answered(browser, picture) -> None:
    """``picture`` (a file) chosen on the page, once its answer, which names it, is shown."""
    browser.find_element(By.ID, "file").send_keys(str(picture))
    wait_for(browser, lambda: picture.name in browser.find_element(By.ID, "truth").text)


def opened_with_models(browser, url: str):
    """The page at ``url`` once its model list has come; returns ``find_element``."""
    browser.get(url)
    element = browser.find_element
    wait_for(browser, lambda: len(element(By.ID, "model").find_elements(By.TAG_NAME,
                                                                        "option")) > 1)
    return element


def delay_test_images(browser, late_s: float = 1.5) -> None:
    """The page's fetches of test images answer ``late_s`` late: room to act while one is on
    its way; ``window.testImagesEnded`` counts those answered or failed."""
    browser.execute_script("""
        const original = window.fetch, late_ms = arguments[0];
        window.testImagesEnded = 0;
        window.fetch = (path, options) => String(path).includes("v1/test-images/")
            ? new Promise((done) => setTimeout(done, late_ms)).then(() => original(path, options))
                .finally(() => { window.testImagesEnded += 1; })
            : original(path, options);""", late_s * 1000)


def labels(stub, image: np.ndarray) -> tuple[int, int]:
    result = stub.Classify(pb.ClassifyRequest(images=[image.tobytes()])).results[0]
    return result.model.label, result.baseline.label


def shown(browser) -> tuple[int, int]:
    return tuple(int(browser.find_element(By.ID, f"{side}-label").get_attribute("data-label"))
                 for side in ("model", "baseline"))


def test_random_test_image_and_a_picked_png_show_the_models_answers(served, browser, test_set,
                                                                   tmp_path):
    url, stub = served
    element = opened_with_models(browser, url)
    element(By.ID, "random").click()
    wait_for(browser, lambda: element(By.ID, "truth").get_attribute("data-index"))
    index = int(element(By.ID, "truth").get_attribute("data-index"))
    assert shown(browser) == labels(stub, test_set[0][index])
    assert element(By.ID, "model-name").text.startswith("mlp v")
    bars = element(By.ID, "model-bars").find_elements(By.CLASS_NAME, "bar")
    assert len(bars) == 3 and bars[0].text.endswith("%")
    assert element(By.ID, "error").text == ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "http_page.png"))

    picture = tmp_path / "trouser.png"
    Image.fromarray(np.kron(test_set[0][2], np.ones((4, 4), np.uint8))).save(picture)
    answered(browser, picture)
    assert shown(browser) == labels(stub, load_png(picture))
    browser.save_screenshot(str(ARTIFACTS / "http_page_file.png"))

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    element(By.ID, "file").send_keys(str(not_an_image))
    wait_for(browser, lambda: element(By.ID, "error").text)
    assert element(By.ID, "error").text == (
        "notes.png: not a picture the page can read (PNG, JPEG, GIF, BMP, WebP, AVIF, ICO)")
    # the trouser's answer stayed beside the error, as if it were this file's
    assert element(By.ID, "truth").get_attribute("textContent") == "28x28, as the model sees it"
    assert element(By.ID, "model-label").get_attribute("textContent") == ""
    assert not element(By.ID, "image").is_displayed()  # no empty picture beside the error
    assert element(By.ID, "model-bars").find_elements(By.CLASS_NAME, "bar") == []


def canvas(browser) -> np.ndarray:
    """The 28x28 image the page drew (as the model saw it)."""
    data = browser.execute_script(
        "return Array.from(document.getElementById('image').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data)")
    return np.asarray(data, dtype=np.uint8).reshape(28, 28, 4)[:, :, 0]


def test_the_controls_and_the_same_file_again_ask_again(served, browser, test_set, tmp_path):
    """Invert, the model and a file picked a second time each bring the answer for what the
    controls now say; a photo over the server's body limit is scaled down by the page."""
    from selenium.webdriver.support.ui import Select

    url, stub = served
    element = opened_with_models(browser, url)
    picture = tmp_path / "trouser.png"
    Image.fromarray(np.kron(test_set[0][2], np.ones((4, 4), np.uint8))).save(picture)
    answered(browser, picture)
    assert np.array_equal(canvas(browser), load_png(picture))

    element(By.ID, "invert").click()
    wait_for(browser, lambda: np.array_equal(canvas(browser), load_png(picture, invert=True)))
    wait_for(browser, lambda: element(By.ID, "model-label").get_attribute("data-label"))
    inverted = load_png(picture, invert=True)
    assert shown(browser) == labels(stub, inverted)

    Select(element(By.ID, "model")).select_by_value("softmax")
    wait_for(browser, lambda: element(By.ID, "model-name").text.startswith("softmax v"))
    assert np.array_equal(canvas(browser), inverted)

    browser.execute_script("clearAnswer()")
    answered(browser, picture)
    assert np.array_equal(canvas(browser), inverted)

    element(By.ID, "invert").click()
    Select(element(By.ID, "model")).select_by_value("")
    photo = tmp_path / "photo.png"
    noise = np.random.default_rng(0).integers(0, 8, (2240, 2240, 3), dtype=np.uint8)
    big = np.minimum(np.kron(test_set[0][2], np.ones((80, 80), np.uint8)), 247)[:, :, None] + noise
    Image.fromarray(big.astype(np.uint8)).save(photo)
    assert photo.stat().st_size > 4 * 2**20  # the server's default --max-message-bytes
    element(By.ID, "file").send_keys(str(photo))
    wait_for(browser, lambda: "photo.png" in element(By.ID, "truth").text
             or element(By.ID, "error").text)
    assert element(By.ID, "error").text == ""
    assert element(By.ID, "model-name").text.startswith("mlp v")
    assert shown(browser) == labels(stub, load_png(photo))


def test_a_late_test_image_does_not_become_what_the_controls_ask_again_for(served, browser,
                                                                          test_set, tmp_path):
    """A random test image that arrived after a file was picked became the page's source:
    changing the model then showed that image instead of the file on screen."""
    from selenium.webdriver.support.ui import Select

    url, _ = served
    element = opened_with_models(browser, url)
    delay_test_images(browser)
    element(By.ID, "random").click()
    picture = tmp_path / "trouser.png"
    Image.fromarray(test_set[0][2]).save(picture)
    answered(browser, picture)
    wait_for(browser, lambda: browser.execute_script("return window.testImagesEnded"))
    Select(element(By.ID, "model")).select_by_value("softmax")
    wait_for(browser, lambda: element(By.ID, "model-name").text.startswith("softmax v"))
    assert "trouser.png" in element(By.ID, "truth").text


def test_a_guarded_server_opens_the_token_box_and_answers_with_the_token(model_repository,
                                                                         browser):
    """The page's 401 opens the token box; the token typed there goes with every call. The
    page loads with no error in the browser's console (a missing favicon was one)."""
    token = "page-secret"
    with http_server(http_settings(model_repository, auth_token=token)) as (_, url):
        browser.get_log("browser")  # what earlier tests left
        browser.get(url)
        element = browser.find_element
        wait_for(browser, lambda: element(By.ID, "token-box").get_attribute("open"))
        assert element(By.ID, "error").text
        element(By.ID, "token").send_keys(token + "\n")
        element(By.ID, "token").send_keys("\t")  # the box's change event
        wait_for(browser, lambda: len(element(By.ID, "model").find_elements(By.TAG_NAME,
                                                                            "option")) > 1)
        element(By.ID, "random").click()
        wait_for(browser, lambda: element(By.ID, "model-label").get_attribute("data-label"))
        assert element(By.ID, "error").text == ""
        unexpected = [entry["message"] for entry in browser.get_log("browser")
                      if not entry["message"].startswith(f"{url}/v1/models - ")]
        assert unexpected == []


def test_a_small_file_of_many_pixels_is_scaled_down_by_the_page(served, browser, test_set,
                                                                tmp_path):
    """A picture of few bytes but more pixels than the server decodes (25,000,000) went as it
    was: the page showed the server's "scale it down first", which it could not."""
    url, stub = served
    browser.get(url)
    element = browser.find_element
    picture = tmp_path / "poster.png"
    Image.fromarray(np.kron(test_set[0][1], np.ones((200, 200), np.uint8))).save(picture)
    assert picture.stat().st_size < 2 * 2**20  # under the page's own size threshold
    element(By.ID, "file").send_keys(str(picture))
    wait_for(browser, lambda: "poster.png" in element(By.ID, "truth").text
             or element(By.ID, "error").text)
    assert element(By.ID, "error").text == ""
    assert shown(browser) == labels(stub, load_png(picture))


def test_a_file_can_be_picked_with_the_keyboard_or_a_click_anywhere_on_the_zone(served,
                                                                                 browser):
    """The file input was hidden, so no tab stop reached it, and the drop zone's pointer cursor
    promised a click that did nothing off the underlined words."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    url, _ = served
    browser.get(url)
    reached = []
    for _ in range(12):  # as a person presses Tab (a file input's send_keys takes a path)
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.append(browser.switch_to.active_element.get_attribute("id"))
    assert "file" in reached, reached
    browser.execute_script("""window.pickerOpened = false;
        document.getElementById("file").addEventListener("click", (event) => {
            window.pickerOpened = true; event.preventDefault(); });""")
    browser.find_element(By.ID, "drop").click()  # its middle: the text, not the link
    assert browser.execute_script("return window.pickerOpened") is True


def test_a_random_image_asked_for_is_what_the_controls_ask_again_for(served, browser,
                                                                      test_set, tmp_path):
    """With a file on screen, a model chosen while a random test image was on its way classified
    the file again, and the random image was dropped."""
    from selenium.webdriver.support.ui import Select

    url, _ = served
    element = opened_with_models(browser, url)
    picture = tmp_path / "boot.png"
    Image.fromarray(test_set[0][0]).save(picture)
    answered(browser, picture)
    delay_test_images(browser)
    element(By.ID, "random").click()
    Select(element(By.ID, "model")).select_by_value("softmax")
    wait_for(browser, lambda: element(By.ID, "truth").text.startswith("test image"))
    assert element(By.ID, "model-name").text.startswith("softmax v")


def test_a_test_images_dir_under_home_is_found(model_repository, tmp_path, monkeypatch, caplog):
    """--test-images-dir=~/fashion (bash leaves a ~ after = alone) was "not a directory": the
    page's test images were 404."""
    from common.dataset import DEFAULT_DATA_DIR

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "fashion").symlink_to(DEFAULT_DATA_DIR)
    with caplog.at_level("WARNING"), http_server(
            http_settings(model_repository, test_images_dir="~/fashion")) as (_, url):
        answer = requests.get(f"{url}/v1/test-images/0", timeout=5)
    assert (answer.status_code, answer.json().get("class_name")) == (200, "Ankle boot")
    assert [r.getMessage() for r in caplog.records  # (a tree without the native server warns)
            if r.levelname == "WARNING" and r.name.startswith("serving.http")] == []
