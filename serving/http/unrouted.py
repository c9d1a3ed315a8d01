"""What a request no route serves is answered, and which model its URL names (which counts the
refusal, as that URL's other refusals are counted: serving/http/app.py)."""

from urllib.parse import parse_qs

from serving.errors import NotFound, Unimplemented
from serving.http.body import Body, error_body

# RFC 9110's methods and PATCH: on a path that serves others, 405; any other method, 501 (9.1)
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}


def refusal(method: str, path: str, allowed: list[str]) -> Body:
    """The answer to ``method`` on ``path``, whose routes serve the verbs ``allowed`` only:
    501 (raised) for a method the server does not know, 405 for one the path does not serve,
    404 (raised) for a path no route serves."""
    if method not in KNOWN_METHODS:
        raise Unimplemented(f"{method}: not a method this server knows; it serves GET, HEAD "
                            "and POST")
    # a path as sent may hold a newline (%0A) or other control characters: escaped, the
    # message stays one line
    shown = path if path.isprintable() else path.encode("unicode_escape").decode()
    if allowed := list(dict.fromkeys(allowed)):  # /v2/models/stats matches two routes
        return error_body(f"{method} {shown}: use {' or '.join(allowed)}", 405,
                          (("Allow", ", ".join(allowed)),))
    raise NotFound(f"no endpoint {method} {shown}: see / (the page), /v1/models, /v2")


def url_model(environ: dict, path: dict, in_query: bool) -> str:
    """The model the URL names: its path's (``path``: a route's groups), or, ``in_query``
    (/v1/classify's: the other calls refuse a query's model or pass it over), its query's."""
    return path.get("model") or path.get("name") or (query_model(environ) if in_query else "")


def query_model(environ: dict) -> str:
    """The model the query names (``?model=``), the last if several, as /v1/classify reads it."""
    return parse_qs(environ.get("QUERY_STRING", "")).get("model", [""])[-1]
