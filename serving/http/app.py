"""The HTTP side as one WSGI application: each route names the data plane method it calls, and
every call goes through the same ``CallPipeline`` as gRPC's (token, admission, metrics, error
mapping); a ``ServingError`` becomes its class's ``http_status`` with the protocol's
``{"error": "..."}`` body. Health and the page are open, as gRPC's health is.

WSGI keeps the server library replaceable (serving/http/transport.py picks it) and lets the
data plane run on the thread that read the request.
"""

import re
import time
from collections.abc import Callable
from concurrent.futures import Executor
from http import HTTPStatus
from pathlib import Path

from fashion_mnist.v1 import classifier_pb2 as domain_pb
from inference import grpc_service_pb2 as pb
from serving.api.classifier import SERVICE_NAME as CLASSIFIER
from serving.api.inference import INFER_NAMED_BY
from serving.api.inference import SERVICE_NAME as INFERENCE
from serving.codecs.inference import parse_version
from serving.errors import (
    ServingError,
    Unauthenticated,
    Unimplemented,
    UnsupportedCoding,
)
from serving.http import domain, rest
from serving.http.body import (
    CODINGS,
    HAND_OVER,
    HAND_OVER_AFTER_S,
    HANDED,
    Body,
    answer_headers,
    error_body,
    hand_over,
    json_body,
    message_json,
    read_body,
)
from serving.http.unrouted import query_model, refusal, url_model
from serving.pipeline import UNCOUNTED_PREFIXES, Call, CallPipeline

# What an error's status asks to be said with it (RFC 9110): how to authenticate; which codings
# the server decodes.
ERROR_HEADERS = {Unauthenticated: (("WWW-Authenticate", "Bearer"),),
                 UnsupportedCoding: (("Accept-Encoding", ", ".join(CODINGS)),)}
PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"
# The page may fetch from this server only: nothing from outside, whatever is injected.
PAGE_POLICY = ("default-src 'none'; connect-src 'self'; img-src 'self' data: blob:; "
               "style-src 'unsafe-inline'; script-src 'unsafe-inline'; form-action 'none'; "
               "base-uri 'none'; frame-ancestors 'none'")
TEST_IMAGE_METHOD = "/fashion_mnist.http.Page/TestImage"
V2, DOMAIN = f"/{INFERENCE}/", f"/{CLASSIFIER}/"
_MODEL = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
# before an endpoint's own last segment the model may hold a "/" (a%2Fb, which granian decodes):
# no model is named so, and it is said as for any unknown model, not as an unknown path
_NAMED = r"/v2/models/(?P<model>[^/]+(?:/[^/]+)*?)(?:/versions/(?P<version>[^/]+))?"


class HttpApp:
    def __init__(self, pipeline: CallPipeline, classifier, inference, max_body_bytes: int, *,
                 test_images: domain.TestImages, decoder: Executor, max_images: int):
        """``decoder``: the threads that decode image files (few: each takes ~220 MB);
        ``max_images``: --max-request-images, which a JSON body's images are counted against
        before they are converted."""
        self._pipeline = pipeline
        self._classifier = classifier
        self._inference = inference
        self._max_body_bytes = max_body_bytes
        self._test_images = test_images
        self._decoder, self._max_images = decoder, max_images
        self._page = PAGE.read_bytes()
        # each route: its verb, its path, the handler and the call it makes (which counts it)
        self._routes: list[tuple[str, re.Pattern, Callable, str]] = [
            (verb, re.compile(pattern), handler, method) for verb, pattern, handler, method in (
                ("GET", r"/v2/health/live", self._live, V2 + "ServerLive"),
                ("GET", r"/v2/health/ready", self._ready, V2 + "ServerReady"),
                ("GET", r"/v2/?", self._server_metadata, V2 + "ServerMetadata"),  # OpenAPI's: /v2/
                ("GET", r"/v2/models/stats", self._statistics, V2 + "ModelStatistics"),
                ("GET", _MODEL, self._model_metadata, V2 + "ModelMetadata"),
                ("GET", _NAMED + "/ready", self._model_ready, V2 + "ModelReady"),
                ("GET", _NAMED + "/config", self._model_config, V2 + "ModelConfig"),
                ("GET", _NAMED + "/stats", self._statistics, V2 + "ModelStatistics"),
                ("POST", _NAMED + "/infer", self._infer, V2 + "ModelInfer"),
                ("POST", r"/v1/classify", self._classify, DOMAIN + "Classify"),
                ("GET", r"/v1/models", self._list_models, DOMAIN + "ListModels"),
                ("GET", r"/v1/models/(?P<name>[^/]+)", self._get_model, DOMAIN + "GetModel"),
                ("GET", r"/v1/test-images/(?P<index>[^/]+)", self._test_image, TEST_IMAGE_METHOD),
                ("GET", r"/(?:index\.html)?", self._page_body, ""),  # not a call: not counted
            )]

    def __call__(self, environ: dict, start_response):
        try:
            body = self._answer(environ)
        except ServingError as error:
            body = error_body(str(error), error.http_status, ERROR_HEADERS.get(type(error), ()))
        if environ.get(HAND_OVER) is HANDED:  # granian has it (``_call``): nothing to add
            return []
        start_response(f"{body.status} {_phrase(body.status)}", answer_headers(environ, body))
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body.data]

    def _answer(self, environ: dict) -> Body:
        path = environ.get("PATH_INFO", "").encode("latin-1").decode(errors="replace")
        method = environ["REQUEST_METHOD"]
        verb = "GET" if method == "HEAD" else method
        allowed, served = [], None  # served: the path's first route (call, match), if any
        for route_verb, pattern, handler, call in self._routes:
            match = pattern.fullmatch(path)  # not "$", which matches before a final newline
            if match and route_verb == verb:
                return handler(environ, call, {k: v for k, v in match.groupdict().items() if v})
            if match:
                allowed += ["GET", "HEAD"] if route_verb == "GET" else [route_verb]
                served = served or (call, match)
        if served:
            self._count_refused(environ, *served)
        return refusal(method, path, allowed)

    def _count_refused(self, environ: dict, call: str, match: re.Match) -> None:
        """A method the path does not serve (405, 501) counts as the call the path makes,
        refused UNIMPLEMENTED (gRPC's code for a method not served), under the model the URL
        names, as that call's other refusals do (the page and health are never counted)."""
        if call and not call.startswith(UNCOUNTED_PREFIXES):
            named = url_model(environ, match.groupdict(), call == DOMAIN + "Classify")
            self._pipeline.count_unanswered(  # (any request naming the model labels it alike)
                [(call, Unimplemented.grpc_code)], pb.ModelInferRequest(model_name=named))

    def _call(self, environ: dict, method: str, handler: Callable, request, *,
              parse: Callable | None = None, encode: Callable = json_body,
              body: list | None = None) -> Body:
        """``handler`` (a data plane method) through the call pipeline, which also runs
        ``parse`` (the request into the data plane's) and ``encode`` (the response into the
        body), so that whatever fails in them is mapped and counted as the call's failure.
        ``body``: where the request body goes, read before the call is admitted (a client
        that stalls in the middle of it holds no place under --max-concurrent-calls). A call
        that ran HAND_OVER_AFTER_S or more hands its answer over itself (``hand_over``), to
        learn whether its client was still there to take it: if not, it is CANCELLED."""
        taken, started = [True], time.perf_counter()  # taken[0] False: the call is CANCELLED
        call = Call(method, environ.get("HTTP_AUTHORIZATION", ""), _peer(environ),
                    is_active=lambda: taken[0], grace_cuts=False)  # the drain waits for it

        def answer(request, call) -> Body:  # (``body`` is the request's)
            answered = encode(handler(request, call))
            if time.perf_counter() - started >= HAND_OVER_AFTER_S:
                taken[0] = hand_over(environ, answered)
            return answered

        def receive() -> None:  # a body refused (400, 413, 415, 501) or cut short (its client
            try:  # went: CANCELLED) fails in parse, once admitted: under the URL's model
                body.append(read_body(environ, self._max_body_bytes))
            except ServingError as error:
                body.append(error)

        def parse_body(request):
            if isinstance(body[0], ServingError):
                raise body[0]
            return parse(request)

        return self._pipeline.unary(call, answer, request, parse if body is None else parse_body,
                                    None if body is None else receive)

    # Open Inference Protocol

    def _live(self, environ, method, _):
        return self._call(environ, method, self._inference.ServerLive, pb.ServerLiveRequest(),
                          encode=lambda answer: json_body({"live": answer.live}))

    def _ready(self, environ, method, _):
        """Not ready once draining, so that balancers and probes turn away first: 400, as the
        protocol has it ("a 4xx status code indicates false") and Triton answers. Like
        ServerLive, through the pipeline, which asks no token of health and refuses it never."""
        return self._call(environ, method, self._inference.ServerReady,
                          pb.ServerReadyRequest(), encode=lambda answer: json_body(
                              {"ready": answer.ready}, 200 if answer.ready else 400))

    def _server_metadata(self, environ, method, _):
        return self._call(environ, method, self._inference.ServerMetadata,
                          pb.ServerMetadataRequest(), encode=_json)

    def _model_metadata(self, environ, method, path):
        return self._call(
            environ, method, self._inference.ModelMetadata,
            pb.ModelMetadataRequest(name=path["model"], version=path.get("version", "")),
            encode=_json)

    def _model_ready(self, environ, method, path):
        """200 if ready; as Triton's, a model or version not loaded is 404 and a draining
        server 503 (ModelReady's errors: tritonclient reads the status)."""
        return self._call(
            environ, method, self._inference.ModelReady,
            pb.ModelReadyRequest(name=path["model"], version=path.get("version", "")),
            encode=lambda response: json_body({"name": path["model"], "ready": response.ready}))

    def _model_config(self, environ, method, path):
        return self._call(  # Triton's shape: the config itself
            environ, method, self._inference.ModelConfig,
            pb.ModelConfigRequest(name=path["model"], version=path.get("version", "")),
            encode=lambda response: _json(response.config))

    def _statistics(self, environ, method, path):
        return self._call(
            environ, method, self._inference.ModelStatistics,
            pb.ModelStatisticsRequest(name=path.get("model", ""),
                                      version=path.get("version", "")), encode=_json)

    def _infer(self, environ, method, path):
        forms, body = [], []

        def parse(body: bytes) -> pb.ModelInferRequest:
            # an unknown model or version is said first, as over gRPC, its fields named as
            # ModelInfer names them; its outputs bound those of the body translated
            version = parse_version(path.get("version", ""), "model_version")
            model = self._classifier.registry.get(path["model"], version, INFER_NAMED_BY)
            request, form = rest.decode_infer_request(
                body, environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"), path["model"],
                path.get("version", ""), max_images=self._max_images,
                model_outputs=len(model.manifest.outputs))
            forms.append(form)
            return request

        return self._call(  # the URL's model labels the metrics if the body is bad
            environ, method, self._inference.ModelInfer,
            pb.ModelInferRequest(model_name=path["model"]),
            parse=lambda _: parse(body[0]), body=body,
            encode=lambda response: rest.encode_infer_response(response, forms[0]))

    # The domain API and the page

    def _classify(self, environ, method, _):
        parsed, body = {}, []

        def parse(body: bytes) -> domain_pb.ClassifyRequest:
            parsed["options"] = options = domain.Options(environ.get("QUERY_STRING", ""))
            domain.check_media_type(environ.get("CONTENT_TYPE", ""))
            parsed["request"] = domain.decode_classify(body, options, self._decoder,
                                                       self._max_images)
            return parsed["request"]

        def encode(response: domain_pb.ClassifyResponse) -> Body:
            return json_body(domain.encode_classify(parsed["request"], response,
                                                    parsed["options"]))

        # the query's model labels the metrics of a body that fails to parse, as /v2's URL's
        named = query_model(environ)
        return self._call(environ, method, self._classifier.Classify,
                          domain_pb.ClassifyRequest(model=named) if named else environ,
                          parse=lambda _: parse(body[0]), body=body, encode=encode)

    def _list_models(self, environ, method, _):
        return self._call(
            environ, method, self._classifier.ListModels,
            environ.get("QUERY_STRING", ""), parse=domain.list_models_request,
            encode=lambda response: json_body(
                domain.models_json(response, self._classifier.default_model)))

    def _get_model(self, environ, method, path):
        return self._call(
            environ, method, self._classifier.GetModel,
            environ.get("QUERY_STRING", ""), encode=_json,
            parse=lambda query: domain_pb.GetModelRequest(
                name=path["name"], version=domain.version_option(query)))

    def _test_image(self, environ, method, path):
        """"random" is another image each time: no cache may keep one; a fixed index may be."""
        cache = (("Cache-Control", "no-store"),) if path["index"] == "random" else ()
        return self._call(environ, method,
                          lambda index, _call: self._test_images.get(index), path["index"],
                          encode=lambda image: Body(json_body(image).data, headers=cache))

    def _page_body(self, environ, *_):
        return Body(self._page, "text/html; charset=utf-8",
                    (("Content-Security-Policy", PAGE_POLICY),
                     ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-cache")))


def _json(message) -> Body:
    return json_body(message_json(message))


def _peer(environ: dict) -> str:
    """The client as gRPC names its peer ("ipv4:10.0.0.5", "ipv6:%5B::1%5D"), so that one
    search of the log finds its calls over both; without gRPC's ":PORT": granian gives none."""
    address = environ.get("REMOTE_ADDR", "").removeprefix("::ffff:")  # IPv4 on "::"
    return f"ipv6:%5B{address}%5D" if ":" in address else f"ipv4:{address}" if address else ""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
