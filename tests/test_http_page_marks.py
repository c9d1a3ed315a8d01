"""The web page marks each answer to a test image right or wrong, in chromium."""

from selenium.webdriver.common.by import By

from tests.http_helpers import ARTIFACTS
from tests.test_http_page import browser, labels, opened_with_models, pytestmark, served, wait_for

__all__ = ["browser", "pytestmark", "served"]  # the fixtures this module's tests take; its skip


def test_the_answers_to_a_test_image_are_marked_right_or_wrong(served, browser, test_set):
    """Under a test image stood its true label and beside it each model's answer: whether a
    model was right took reading both class names and comparing them."""
    url, stub = served
    images, truths = test_set
    answers = {index: labels(stub, images[index]) for index in range(200)}
    right = next(i for i, (model, _) in answers.items() if model == truths[i])
    wrong = next(i for i, (model, _) in answers.items() if model != truths[i])
    element = opened_with_models(browser, url)
    for index in (right, wrong):
        browser.execute_script("fetch('v1/test-images/' + arguments[0]).then((answer) => "
                               "answer.json()).then(classifyTestImage)", index)
        wait_for(browser, lambda index=index: element(By.ID, "truth").get_attribute(
            "data-index") == str(index))
        for side, answer in zip(("model", "baseline"), answers[index], strict=True):
            shown = element(By.ID, f"{side}-label")
            mark = "\u2713" if answer == truths[index] else "\u2717 (wrong)"
            assert shown.text.endswith(mark), (index, side, shown.text)
            assert ("wrong" in shown.get_attribute("class")) == (answer != truths[index])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "http_page_wrong.png"))  # the last: a wrong answer
    browser.execute_script("clearAnswer()")
    assert element(By.ID, "model-label").get_attribute("class") == "label"
