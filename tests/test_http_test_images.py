"""The page's test images (/v1/test-images/...) against a real server: what caches may keep."""

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

