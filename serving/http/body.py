"""The bodies of an HTTP call. The request's: read whole within the server's limit (413 past
it), its transfer coding checked (501 for any but chunked) and its content coding decoded
(gzip, deflate; 415 for any other), each refusal a ``ServingError`` naming what was wrong. The
answer's: a ``Body``, JSON unless a transport says otherwise, its headers, and its hand-over to
the server."""

import zlib
from dataclasses import dataclass

import orjson
from google.protobuf import json_format

from serving.errors import (
    Cancelled,
    InvalidArgument,
    TooLarge,
    Unavailable,
    Unimplemented,
    UnsupportedCoding,
)

CODINGS = ("gzip", "deflate")  # Content-Encoding: tritonclient's request_compression_algorithm
MAX_GZIP_MEMBERS = 16  # clients send one
BODY_READ = "fmnist.body_read"  # set in the WSGI environ once the request body is read whole
JSON_TYPE = "application/json"
# In the environ, a server's ``hand_over(status, headers, data) -> bool``: the answer given to
# the client, False if it is gone. WSGI tells an app nothing of a client gone while its call
# runs; a call handing its answer over (before it is counted) counts it CANCELLED then.
HAND_OVER = "fmnist.hand_over"
# Only calls that ran this long (clients give up on slow calls): the hand-over streams the answer,
# which cost ~30 us, 9% of a batch-1 call's 0.3 ms median on 127.0.0.1 (wrk, one connection).
HAND_OVER_AFTER_S = 0.1
HANDED = object()
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Body:
    """An HTTP answer: its body, status and headers."""

    data: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    status: int = 200


def read_body(environ: dict, limit: int) -> bytes:
    """The request body, refused (413) past the largest message the server takes; read
    inside the pipeline, after the token check and before admission."""
    length = environ.get("CONTENT_LENGTH") or ""
    coding = environ.get("HTTP_TRANSFER_ENCODING", "chunked").strip().lower()
    if {part.strip() for part in coding.split(",")} == {"chunked"} != {coding}:  # a doubled header
        raise InvalidArgument("Transfer-Encoding: chunked given more than once; a body is "
                              "chunked once (RFC 9112 6.1)")
    if coding != "chunked":  # granian de-chunks, and would pass e.g. gzip's bytes on as is
        raise Unimplemented(f"Transfer-Encoding: {coding!r} is not served; send the body "
                            "as it is or chunked (Content-Encoding: gzip compresses it)")
    if length and (not length.isdigit() or int(length) > limit):
        if length.isdigit():
            raise TooLarge(f"request body: {length} bytes, over the server's limit of "
                           f"{limit} (--max-message-bytes)")
        raise InvalidArgument(f"Content-Length: expected a byte count, got {length!r}")
    try:
        data = environ["wsgi.input"].read(int(length) if length else limit + 1)
    except (OSError, ValueError) as error:
        raise InvalidArgument(f"request body: cannot be read ({error})") from None
    # granian ends the read where the connection did (closed, reset, or shut for writing):
    # a client gone mid-request, CANCELLED as over gRPC, not a bad request
    if length and len(data) < int(length):
        raise Cancelled(f"request body: the client stopped sending after {len(data)} of its "
                        f"{length} bytes (Content-Length)")
    if len(data) > limit:  # chunked
        raise TooLarge(f"request body: over the server's limit of {limit} bytes "
                       "(--max-message-bytes)")
    environ[BODY_READ] = True
    header = environ.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    # RFC 9110 5.6.1: a list's empty elements are ignored ("gzip," is gzip; "" no coding)
    codings = [coding for coding in map(str.strip, header.split(",")) if coding]
    if len(codings) > 1:  # RFC 9110 8.4.1: in the order applied
        raise UnsupportedCoding(f"Content-Encoding: {header!r} is {len(codings)} codings, one "
                                "applied over another; one is served (gzip or deflate): "
                                "compress the body once")
    encoding = codings[0] if codings else "identity"
    encoding = {"x-gzip": "gzip"}.get(encoding, encoding)  # RFC 9110: the same coding
    if encoding in CODINGS:
        return _decompress(data, encoding, limit)
    if encoding != "identity":
        raise UnsupportedCoding(f"Content-Encoding: {encoding!r} is not served; use "
                                f"{', '.join(CODINGS)} or none")
    return data


def answer_headers(environ: dict, body: Body) -> list[tuple[str, str]]:
    headers = [("Content-Type", body.content_type), ("Content-Length", str(len(body.data))),
               *body.headers]
    # a body refused unread: the client's next request would be read from its rest;
    # draining: a keep-alive client's next request goes to another server (as gRPC's GOAWAY)
    if body.status == Unavailable.http_status or unread_body(environ):
        headers.append(("Connection", "close"))
    return headers


def hand_over(environ: dict, body: Body) -> bool:
    """Gives a call's answer to the server within the call, where the server can (granian:
    ``HAND_OVER``, which says whether the client was still there to take it); True if not."""
    if (server := environ.get(HAND_OVER)) is None:
        return True
    environ[HAND_OVER] = HANDED
    return server(body.status, answer_headers(environ, body),
                  b"" if environ["REQUEST_METHOD"] == "HEAD" else body.data)


def unread_body(environ: dict) -> bool:
    """Whether the request had a body that was refused unread (401, 404, 413, ...)."""
    sent = environ.get("CONTENT_LENGTH", "") not in ("", "0") \
        or "HTTP_TRANSFER_ENCODING" in environ
    return sent and not environ.get(BODY_READ)


def _decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """The body, decompressed: every member of a gzip body (RFC 1952 allows several; up to
    MAX_GZIP_MEMBERS, each one copying the rest of the body), nothing cut short and nothing
    after the end but zero padding, as gzip(1) takes."""
    if not data:
        return data
    out = bytearray()
    for _ in range(MAX_GZIP_MEMBERS):
        decompressor = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
        try:
            out += decompressor.decompress(data, limit + 1 - len(out))
        except zlib.error as error:
            raise InvalidArgument(f"request body: not valid {encoding} data ({error})") from None
        if len(out) > limit or decompressor.unconsumed_tail:
            raise TooLarge(f"request body: over the server's limit of {limit} bytes once "
                           "decompressed (--max-message-bytes)")
        if not decompressor.eof:
            raise InvalidArgument(f"request body: the {encoding} data ends early")
        data = decompressor.unused_data
        if not data.strip(b"\0"):
            return bytes(out)
        if encoding != "gzip":
            raise InvalidArgument(f"request body: {len(data)} bytes after the {encoding} data")
    raise InvalidArgument(f"request body: more than {MAX_GZIP_MEMBERS} gzip members")


def parse_json(data: bytes):
    """orjson: 3x the standard library's speed on a batch of 64 images' numbers. An integer
    past 64 bits it reads as a float, which a refusal then shows (1e+23): reading a refused
    body again for its exact integers cost up to 6x the refusal, for anyone sending them."""
    try:
        return orjson.loads(data.removeprefix(_BOM))  # RFC 8259 8.1: it may be ignored
    except orjson.JSONDecodeError as error:  # also nesting past 1024 levels
        raise InvalidArgument(f"request body: not valid JSON ({not_utf8(data) or error})") from None


def not_utf8(data: bytes) -> str:
    """Where ``data`` stops being UTF-8, JSON's one encoding (RFC 8259 8.1), or "" if it is:
    orjson says "surrogates not allowed" at char 0 of any bad byte anywhere."""
    if unmarked_utf16_or_32(data):
        nul = data.index(0)
        return f"NUL bytes from byte {nul}, as in UTF-16 or UTF-32; JSON is UTF-8"
    try:
        data.decode()
        return ""
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        mark = f", {marked}'s byte order mark" if (marked := byte_order_mark(data)) else ""
        return (f"not UTF-8 from byte {error.start} (0x{data[error.start]:02x}, line {line})"
                f"{mark}; JSON is UTF-8")


def byte_order_mark(data: bytes) -> str:
    """"UTF-16" or "UTF-32" if ``data`` begins with that encoding's mark (UTF-32's first: its
    little-endian mark begins as UTF-16's), else ""."""
    return next((name for name, marks in (("UTF-32", (b"\xff\xfe\0\0", b"\0\0\xfe\xff")),
                                          ("UTF-16", (b"\xff\xfe", b"\xfe\xff")))
                 if data.startswith(marks)), "")


def unmarked_utf16_or_32(data: bytes) -> bool:
    """Whether ``data`` starts as JSON in UTF-16 or UTF-32 without a byte order mark does: NUL
    bytes (never in JSON) beside its first "{" or "[" (RFC 4627 3)."""
    head = data[:4]
    return b"\0" in head and head.replace(b"\0", b"").lstrip()[:1] in (b"{", b"[")


def message_json(message) -> dict:
    """Any other answer (metadata, config, statistics) in the protobuf JSON mapping with the
    proto's field names and 64-bit integers as numbers, as Triton's HTTP server writes them
    (perf_analyzer reads ``dims`` and counts as numbers)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True,
                                     unquote_int64_if_possible=True)


def json_body(document, status: int = 200) -> Body:
    return Body(orjson.dumps(document), status=status)


def error_body(message: str, status: int, headers: tuple = ()) -> Body:
    """The protocol's error object."""
    return Body(orjson.dumps({"error": message}), headers=headers, status=status)
