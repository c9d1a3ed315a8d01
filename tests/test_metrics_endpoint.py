"""The metrics port as an HTTP server facing scrapers that misbehave or probe: half a request,
a request trickled a byte a second, HEAD (uptime checkers, curl -I)."""

import contextlib
import http.client
import socket
import threading

import pytest

from tests.conftest import held_port, local_settings, running_server
from tests.test_metrics import scrape, value


@pytest.fixture
def port(model_repository):
    """The metrics port of a one-process server of its own (each test leaves it in its state)."""
    port = held_port()
    with running_server(local_settings(model_repository=model_repository, metrics_port=port,
                                       poll_interval=0)):
        yield port

def test_a_scraper_that_sends_nothing_is_dropped_by_a_one_process_server(port):
    """One process served /metrics with prometheus_client's own server, which kept a thread
    for each client that connected and sent half a request, for good (the supervisor's drops
    them after 5 s): one server for both now."""
    with socket.create_connection(("127.0.0.1", port)) as idle:
        idle.sendall(b"GET /metr")
        idle.settimeout(15)
        assert idle.recv(1024) == b""  # closed by the server, within its 5 s
        assert value(scrape(port), "fmnist_requests_in_flight") == 0  # and it still serves


def test_head_of_metrics_is_get_without_its_body(port):
    """RFC 9110 9.3.2: HEAD is GET's answer without the body, for uptime checkers (the
    blackbox exporter's method: HEAD) and curl -I. prometheus_client's app answered 405 "use
    OPTIONS or GET", and sent that body after the headers of a HEAD answer."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        client.settimeout(10)
        answer = b""
        while chunk := client.recv(65536):  # the server closes: HTTP/1.0
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 "), answer[:300]
        assert b"Content-Type: text/plain" in head and b"Content-Encoding: gzip" in head
        assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 100
        assert body == b""
        assert value(scrape(port), "fmnist_requests_in_flight") == 0  # GET as before


def test_a_scraper_that_trickles_its_request_is_dropped_after_5_s_in_all(port):
    """A byte every second, each within the read timeout, held a thread of the server's for as
    long as the client went on, one per connection with no bound: the request gets 5 s. Here
    it would take 43 s, a byte at least a second apart: closed before its end, it was cut."""
    with socket.create_connection(("127.0.0.1", port)) as slow:
        closed = False
        slow.settimeout(1)
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 12:
            with contextlib.suppress(TimeoutError):
                try:
                    slow.sendall(bytes([byte]))
                    closed = slow.recv(1024) == b""
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
            if closed:
                break
        assert closed, "the request was read to its end, 43 s after it began"
        assert value(scrape(port), "fmnist_requests_in_flight") == 0  # and it still serves


def test_the_methods_metrics_allows_include_head(port):
    """HEAD is answered (above), but OPTIONS and a 405 said `Allow: OPTIONS,GET` and "use
    OPTIONS or GET" (prometheus_client's words): a client or proxy trusting Allow would not
    send HEAD. Every method answered is listed."""
    for method, status in (("OPTIONS", 200), ("POST", 405)):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(method, "/metrics")
        answer = connection.getresponse()
        body = answer.read()
        assert (answer.status, answer.getheader("Allow")) == (status, "GET, HEAD, OPTIONS")
        assert body == (b"# HTTP 405 Method Not Allowed: POST; use GET, HEAD or OPTIONS\n"
                        if status == 405 else b"")
        connection.close()


def test_idle_connections_are_served_a_bounded_number_at_once(port):
    """Each connection had a thread of its own (and its 5 s timer's) with no bound: idle ones
    made threads as fast as a client opened them (1,000 loopback clients: 1,600 threads). A
    few are served at once (16); the next wait to be taken in, then scrape."""
    def handlers():
        return sum("process_request_thread" in t.name for t in threading.enumerate())

    idle, most = [socket.create_connection(("127.0.0.1", port))], 0
    try:
        idle[0].settimeout(0.05)
        while True:  # one more each time the last is taken in, until the first is cut (5 s)
            most = max(most, handlers())
            if most == len(idle) < 64:
                idle.append(socket.create_connection(("127.0.0.1", port)))
            with contextlib.suppress(TimeoutError):
                if idle[0].recv(1) == b"":
                    break
    finally:
        for connection in idle:
            connection.close()
    assert most < len(idle), f"all {most} idle connections were each given a thread"
    assert value(scrape(port), "fmnist_requests_in_flight") == 0
