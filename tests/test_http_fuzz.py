"""Property-based fuzzing of the HTTP side, as tests/test_fuzz.py fuzzes gRPC's: JSON
documents near and far from a valid infer request, binary tails and header lengths that do not
add up, image and JSON bodies for /v1/classify, paths, and header values. The server must
answer every one with a status of the error contract (never 500, never a dropped connection)
and its ``{"error": ...}`` body, and answer a good request right after each example exactly as
onnxruntime does on the model file.

Cases per run: infer 300, classify 200, paths 200, headers 150.
"""

import json
from urllib.parse import quote

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.http_helpers import http_server, http_settings
from tests.test_http_api import newest_onnx

MAX_IMAGES = 8
CONTRACT = {200, 400, 401, 404, 405, 413, 415}
FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GOOD = np.arange(2 * 784, dtype=np.uint8).reshape(2, 28, 28)


@pytest.fixture(scope="module")
def fuzzed(model_repository):
    settings_ = http_settings(model_repository, max_request_images=MAX_IMAGES,
                              max_message_bytes=65536)
    with http_server(settings_) as (_, url), requests.Session() as session:
        expected = newest_onnx(model_repository, "mlp").run(None, {"images": GOOD})[1]
        yield url, session, expected.tolist()


def answered_within_contract(response: requests.Response) -> None:
    assert response.status_code in CONTRACT, (response.status_code, response.text[:300])
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str)


def still_answers_right(url: str, session: requests.Session, labels: list) -> None:
    document = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [2, 28, 28],
                            "data": GOOD.ravel().tolist()}],
                "outputs": [{"name": "label"}]}
    answer = session.post(f"{url}/v2/models/mlp/infer", json=document, timeout=10)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == labels


header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126),
                        max_size=30).map(str.strip)  # what requests lets through
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**65, 2**65),
                    st.floats(allow_nan=False), st.text(max_size=4))
dims = st.one_of(st.integers(-3, 40), st.just(28), scalars)
tensors = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["images", "x", ""]), scalars),
     "datatype": st.one_of(st.sampled_from(["UINT8", "FP32", "BYTES", "INT64", "BOOL", "FP16",
                                            "x"]), scalars),
     "shape": st.one_of(st.just([1, 28, 28]), st.just([2, 28, 28]), st.lists(dims, max_size=4),
                        scalars)},
    optional={"data": st.one_of(st.lists(st.one_of(st.integers(-5, 300), scalars,
                                                   st.lists(st.integers(0, 255), max_size=3)),
                                         max_size=1600), scalars),
              "parameters": st.one_of(st.dictionaries(
                  st.sampled_from(["binary_data_size", "other"]),
                  st.one_of(st.integers(-10, 3200), scalars), max_size=2), scalars)})
outputs = st.lists(st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["probabilities", "label", "nope"]), scalars)},
    optional={"parameters": st.dictionaries(st.sampled_from(["classification", "binary_data"]),
                                            st.one_of(st.integers(-2, 20), scalars),
                                            max_size=2)}), max_size=3)
documents = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensors, max_size=2), scalars)},
    optional={"id": scalars, "outputs": st.one_of(outputs, scalars),
              "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "p"]),
                                            scalars, max_size=2)})


@settings(FUZZ, max_examples=300)
@given(document=documents, tail=st.binary(max_size=3200),
       header=st.one_of(st.none(), st.just("exact"), st.integers(-5, 5000).map(str),
                        header_values),
       path=st.sampled_from(["/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer",
                             "/v2/models/baseline/infer"]))
def test_infer_bodies(fuzzed, document, tail, header, path):
    url, session, labels = fuzzed
    head = json.dumps(document).encode()
    headers = {}
    if header is not None:
        headers["Inference-Header-Content-Length"] = str(len(head)) if header == "exact" else header
    answered_within_contract(session.post(url + path, data=head + tail, headers=headers,
                                          timeout=10))
    still_answers_right(url, session, labels)


@settings(FUZZ, max_examples=200)
@given(body=st.one_of(
    st.binary(max_size=2000),
    st.just(b"\x89PNG\r\n\x1a\n").flatmap(lambda magic: st.binary(max_size=500).map(
        lambda rest: magic + rest)),
    st.fixed_dictionaries({"images": st.one_of(st.lists(st.one_of(
        st.lists(st.integers(-2, 300), min_size=783, max_size=785),
        st.lists(st.lists(st.integers(0, 255), min_size=28, max_size=28), min_size=28,
                 max_size=28), scalars), max_size=10), scalars)},
        optional={"model": scalars, "version": scalars}).map(lambda d: json.dumps(d).encode()),
    st.lists(st.lists(st.integers(0, 255), min_size=784, max_size=784), min_size=1,
             max_size=MAX_IMAGES + 1).map(lambda images: json.dumps({"images": images}).encode())),
    query=st.one_of(st.sampled_from(["", "top=1", "top=10", "pixels=1", "invert=1",
                                     "model=softmax&version=1&pixels=1", "model=baseline"]),
                    st.text(max_size=20)))
def test_classify_bodies(fuzzed, body, query):
    url, session, labels = fuzzed
    answered_within_contract(session.post(f"{url}/v1/classify?{quote(query, safe='=&')}",
                                          data=body, timeout=10))
    still_answers_right(url, session, labels)


@settings(FUZZ, max_examples=200)
@given(segments=st.lists(st.one_of(st.text(min_size=1, max_size=8).map(
    lambda text: quote(text, safe="")), st.binary(min_size=1, max_size=6).map(
    lambda data: quote(data, safe=""))), min_size=1, max_size=5),  # any bytes, UTF-8 or not
       prefix=st.sampled_from(["/v2/models/", "/v2/", "/v1/", "/v1/test-images/", "/"]),
       verb=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
def test_paths(fuzzed, segments, prefix, verb):
    url, session, labels = fuzzed
    path = prefix + "/".join(segments)
    response = session.request(verb, url + path, data=b"{}", timeout=10)
    assert response.status_code in CONTRACT, (path, response.status_code, response.text[:300])
    still_answers_right(url, session, labels)


@settings(FUZZ, max_examples=150)
@given(authorization=header_values, encoding=header_values, length=header_values,
       content_type=header_values)
def test_header_values(fuzzed, authorization, encoding, length, content_type):
    url, session, labels = fuzzed
    body = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28],
                                   "data": [0] * 784}]}).encode()
    answered_within_contract(session.post(
        f"{url}/v2/models/mlp/infer", data=body, timeout=10,
        headers={"Authorization": authorization, "Content-Encoding": encoding,
                 "Inference-Header-Content-Length": length, "Content-Type": content_type}))
    still_answers_right(url, session, labels)
