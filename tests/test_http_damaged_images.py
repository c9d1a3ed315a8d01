"""An image file cut short, sent to /v1/classify of a real server: refused as a damaged file
of its format, not as a body of some other kind."""

import io

import numpy as np
import pytest
import requests
from PIL import Image

from tests.test_http_api import served, url

__all__ = ["served", "url"]  # the fixtures, shared with tests/test_http_api.py


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_a_file_cut_short_is_said_to_be_a_damaged_image_of_its_format(url, kind):
    """A PNG cut in half was refused as "body: expected a PNG, JPEG, GIF, BMP, WEBP image, or
    JSON {...} (image file is truncated)": it was a PNG."""
    pixels = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    file = io.BytesIO()
    Image.fromarray(pixels).save(file, kind)
    whole = file.getvalue()
    answer = requests.post(url + "/v1/classify", data=whole[:len(whole) // 2], timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(
        f"body: a damaged {kind} image, or cut short (image file is truncated")
    assert requests.post(url + "/v1/classify", data=whole, timeout=10).status_code == 200
