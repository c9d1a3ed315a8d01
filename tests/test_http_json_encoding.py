"""JSON that is not UTF-8 (RFC 8259 8.1: JSON is UTF-8), sent to a real server: the refusal
says where the body stops being UTF-8, on both JSON endpoints."""

import json

import pytest
import requests

from tests.test_http_api import served, url

__all__ = ["served", "url"]  # the fixtures, shared with tests/test_http_api.py

PIXELS = json.dumps([0] * 784)
INFER = ('{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], '
         f'"data": {PIXELS}}}],\n "id": "caf\u00e9"}}')
CLASSIFY = f'{{"images": [{PIXELS}],\n "request_id": "caf\u00e9"}}'


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["", "byte order mark"])
@pytest.mark.parametrize(("path", "text"), [("/v2/models/mlp/infer", INFER),
                                            ("/v1/classify", CLASSIFY)])
def test_latin_1_json_is_refused_saying_where_it_is_not_utf_8(url, path, text, bom):
    """A body in Latin-1 (a Windows client's "café") was refused as "not valid JSON (str is not
    valid UTF-8: surrogates not allowed: line 1 column 1 (char 0))": no surrogate, and not
    where the bad byte was. The offset is the body's as sent, byte order mark included."""
    body = bom + text.encode("latin-1")
    answer = requests.post(url + path, data=body, timeout=10)
    assert answer.status_code == 400
    offset = body.index(b"\xe9")
    assert answer.json()["error"] == (
        f"request body: not valid JSON (not UTF-8 from byte {offset} (0xe9, line 2); "
        "JSON is UTF-8)")
    assert requests.post(url + path, data=bom + text.encode(), timeout=10).status_code == 200


@pytest.mark.parametrize(("mark", "encoding"), [
    (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe\0\0", "utf-32-le"), (b"\0\0\xfe\xff", "utf-32-be")])
@pytest.mark.parametrize(("path", "text"), [("/v2/models/mlp/infer", INFER),
                                            ("/v1/classify", CLASSIFY)])
def test_utf_16_or_32_json_with_its_byte_order_mark_is_named(url, path, text, mark, encoding):
    """As Windows PowerShell 5 writes a file (its > and Out-File; -Encoding UTF32 too):
    /v1/classify took it for an image of no format it knows ("body: expected a PNG, JPEG, ...
    or JSON"); then UTF-32's mark was called UTF-16's, or (big-endian) not named at all."""
    answer = requests.post(url + path, data=mark + text.encode(encoding), timeout=10)
    assert answer.status_code == 400
    start = mark.index(mark.lstrip(b"\0"))  # the first byte that is not UTF-8
    assert answer.json()["error"] == (
        f"request body: not valid JSON (not UTF-8 from byte {start} (0x{mark[start]:02x}, line "
        f"1), {encoding[:6].upper()}'s byte order mark; JSON is UTF-8)")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
@pytest.mark.parametrize(("path", "text"), [("/v2/models/mlp/infer", INFER),
                                            ("/v1/classify", CLASSIFY)])
def test_utf_16_or_32_json_without_a_byte_order_mark_is_named(url, path, text, encoding):
    """UTF-16 without its mark (.NET's Encoding.Unicode.GetBytes, iconv -t UTF-16LE) is valid
    UTF-8 full of NUL bytes: it was refused in orjson's words, "not valid JSON (unexpected
    character, expected a string key: line 1 column 2 (char 1))", and big-endian on
    /v1/classify as "body: expected a PNG, JPEG, ... image, or JSON"."""
    body = text.encode(encoding)
    answer = requests.post(url + path, data=body, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"] == (
        f"request body: not valid JSON (NUL bytes from byte {body.index(0)}, as in UTF-16 or "
        "UTF-32; JSON is UTF-8)")
