"""The page's test images (/v1/test-images/...) against a real server: what caches may keep,
and a data directory that cannot be read answered with the route's one-line refusal."""

import requests

from tests.http_helpers import http_server, http_settings


def test_a_random_test_image_is_never_cached(model_repository):
    """/v1/test-images/random sent no Cache-Control: a caching proxy could answer every
    "random" with the same image. A fixed index is the same image each time: cacheable."""
    with http_server(http_settings(model_repository)) as (_, url):
        random = requests.get(f"{url}/v1/test-images/random", timeout=5)
        fixed = requests.get(f"{url}/v1/test-images/17", timeout=5)
    assert (random.status_code, random.headers.get("Cache-Control")) == (200, "no-store")
    assert (fixed.status_code, fixed.headers.get("Cache-Control")) == (200, None)


def test_a_data_dir_in_no_users_home_is_refused_in_one_line(model_repository, monkeypatch,
                                                           caplog):
    """FMNIST_DATA_DIR=~nosuchuser/x: expanding it raised RuntimeError outside the route's
    error handling, a 500 and a traceback in place of the missing test set's 404."""
    monkeypatch.setenv("FMNIST_DATA_DIR", "~nosuchuser/x")
    with caplog.at_level("WARNING"), http_server(http_settings(model_repository)) as (_, url):
        answers = [requests.get(f"{url}/v1/test-images/{i}", timeout=5) for i in ("0", "random")]
    assert [(a.status_code, a.json()) for a in answers] == [
        (404, {"error": "no test images on this server (its log says why)"})] * 2
    [logged] = [r.fields["error"] for r in caplog.records
                if r.getMessage() == "test images cannot be read"]
    assert "nosuchuser" in logged and "\n" not in logged
    assert not [r for r in caplog.records if r.exc_info]  # no traceback in the log
