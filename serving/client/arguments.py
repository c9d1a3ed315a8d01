"""What the ``fmnist`` command line checks that argparse cannot alone (a gRPC target with its
port, image files anywhere among classify's options, in the order given), and the argument
types and flags its subcommands share."""

import argparse
import socket

from common.flags import add_option, number_in
from common.paths import DEFAULT_DATA_DIR, home_path
from serving.client import DEFAULT_TARGET

# gRPC names --target takes as they are: unix sockets have no port, ipv4:/ipv6: refuse none
PATH_SCHEMES = ("unix:", "unix-abstract:")  # a path or name, where @ may be its own
LOCAL_SCHEMES = (*PATH_SCHEMES, "vsock:")
GRPC_SCHEMES = (*LOCAL_SCHEMES, "ipv4:", "ipv6:", "xds:", "google-c2p:")


class Placed(str):
    """An argument and its place on the command line, which argparse hands on as it is to
    whichever list takes it: sorted by the first equal argument instead, `--model mlp b.png
    mlp` put the file `mlp` first, at the place of --model's value."""

    def __new__(cls, text: str, place: int) -> "Placed":
        placed = super().__new__(cls, text)
        placed.place = place
        return placed


class IndicesThenFiles(argparse.Action):
    """``--test-index I [I ...]`` followed by image files: argparse gives the option every
    argument up to the next option, and `--test-index 0 shoe.png` said "invalid int value:
    'shoe.png'"; the files go to ``files_after``."""

    def __call__(self, parser, namespace, values, option_string=None):
        count = next((i for i, value in enumerate(values)
                      if not value.removeprefix("-").isdecimal()), len(values))
        if not count:
            raise argparse.ArgumentError(self, f"invalid int value: {values[0]!r}")
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), *map(int, values[:count])])
        namespace.files_after = [*namespace.files_after, *values[count:]]


class TargetError(argparse.ArgumentTypeError, ValueError):
    """A target ``grpc_target`` refuses: argparse says it as the flag's error, and to the
    Python API (``ClassifierClient``) it is a ValueError, in the same words."""


def grpc_target(text: str) -> str:
    """A gRPC target (HOST:PORT, or a gRPC name such as dns:///NAME:PORT), not a URL, and
    with a port: gRPC's default is 443 and fmnist-serve's 50051, so `--target myhost` went to
    443 without a word (grpcurl refuses it too). Other gRPC names (unix:PATH) as they are.
    A scheme in any case, as gRPC takes it (DNS:///NAME:PORT)."""
    lowered = text.lower()
    if shown := _credentials(text):  # every form: gRPC dropped unix:PATH?token=x's query
        form = (f"a {text.partition(':')[0]}: target" if lowered.startswith(LOCAL_SCHEMES)
                else "HOST:PORT")
        raise TargetError(f"expected {form} without credentials, got {shown!r}: give a token "
                          "by --token or FMNIST_TOKEN instead (a target shows in logs and in ps)")
    if lowered.startswith(("http://", "https://")):
        raise TargetError("fmnist speaks gRPC: expected its HOST:PORT (the "
                                         f"server's --port), not an HTTP URL, got {text!r}")
    named = lowered.startswith(GRPC_SCHEMES)
    form = f"a {text.partition(':')[0]}: target" if named else "HOST:PORT"
    if "#" in text:  # 127.0.0.1#x:50051 went to port 443; as URIs, unix:PATH#x and the rest
        raise TargetError(f"expected {form} without a '#', got {text!r}: gRPC drops the '#' "
                          "and all after it, without a word")
    if named:
        if "?" in text:  # an empty query (any other holds credentials, refused above)
            raise TargetError(f"expected {form} without a '?', got {text!r}: gRPC makes no "
                              "channel of an empty query")
        return text
    scheme, slashes, _ = text.partition("://")
    if slashes and not lowered.startswith("dns:"):  # grpc://, passthrough:// (grpc-go's)
        raise TargetError(f"expected HOST:PORT or a gRPC name such as "
                                         f"dns:///NAME:PORT, got {text!r}: gRPC has no "
                                         f"{scheme}: scheme")
    # dns:HOST:PORT, dns://AUTHORITY/HOST:PORT
    address = text[len("dns:"):] if lowered.startswith("dns:") else text
    host, colon, port = (address[2:].partition("/")[2] if address.startswith("//")
                         else address).rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")  # [IPv6]:PORT
    if not (colon and port) or (":" in host and not bracketed):
        raise TargetError(
            f"expected HOST:PORT (fmnist-serve's --port, {DEFAULT_TARGET.rpartition(':')[2]} "
            f"unless set otherwise), got {text!r}: without a port gRPC tries 443")
    # gRPC takes a number modulo 65536: 111697 went to 46161; a service name (:http) is taken
    # as getaddrinfo takes it, another word (:abc, :0x50) failed as "Failed to parse port"
    number = port.strip()
    number = number[1:] if number[:1] in ("+", "-") else number  # int()'s: one sign at most
    if not (number.isascii() and number.isdigit()) and not _service(port):
        raise TargetError(f"expected a port 1..65535, got {text!r}: {port!r} is "
                                         "neither a number nor a service name (such as http)")
    if number.isdigit() and not 0 < int(port) < 65536:
        raise TargetError(f"expected a port 1..65535, got {text!r}")
    return text


def _credentials(target: str) -> str:
    """``target`` as it may be shown if it holds what gRPC would have taken for part of the host
    or port, or dropped (a unix: path's query), else "": a URL's user info, shown but a secret
    (``user:***@``; without a user name, all of it: ``***@``, a token), and a query, each
    value as ``***`` (``?token=***``); an empty secret hides nothing (``@host:1``, ``?token=``:
    an unset variable's), nor does an empty query (``host:50051?``, no credentials). In a
    unix: path or unix-abstract: name, only an authority's @ is a user's
    (``unix://user:***@/path``)."""
    address, question, query = target.partition("?")
    at = address.rfind("@")
    if address.lower().startswith(PATH_SCHEMES):  # unix:/run/user@1000.sock is a path
        after = address.find(":") + 1
        authority = address.find("/", after + 2) if address.startswith("//", after) else after
        at = address.rfind("@", 0, len(address) if authority < 0 else authority)
    if at < 0 and not query:
        return ""
    if at >= 0:
        start = address.rfind("/", 0, at) + 1
        user, colon, secret = address[start:at].partition(":")
        info = f"{user}:{'***' if secret else ''}" if colon else ("***" if user else "")
        address = f"{address[:start]}{info}{address[at:]}"
    hidden = "&".join(f"{name}={'***' if value else ''}" if equals else name and "***"
                      for name, equals, value in (part.partition("=") for part in query.split("&")))
    return address + question + hidden


def _service(name: str) -> bool:
    """Whether ``name`` is a TCP service's (``http``: 80) on this machine, as gRPC finds it."""
    try:
        socket.getservbyname(name, "tcp")
    except OSError:
        return False
    return True


fraction = number_in(float, 0, 1, expected="a fraction 0..1")
version_number = number_in(int, 0, 2**63 - 1, expected="a version 0..2^63-1")


def expected_accuracy(text: str) -> float | str:
    if text == "manifest":
        return text
    try:
        return fraction(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction 0..1 or 'manifest', got {text}") from None


def data_dir_flag(parser: argparse.ArgumentParser) -> None:
    """The test set's directory: the flag its errors name (common.dataset.how_to_get), its ~
    taken as --csv's (common.dataset took it too, but ~NAME of no user failed naming neither);
    FMNIST_DATA_DIR as fmnist-train's and the server's page's."""
    add_option(parser, "--data-dir", type=home_path, default=DEFAULT_DATA_DIR, metavar="DIR",
               help="directory of the test set's IDX files")


def model_flags(parser: argparse.ArgumentParser) -> None:
    """classify's and score's: FMNIST_MODEL and FMNIST_VERSION mean the same to both."""
    add_option(parser, "--model", default="", metavar="NAME",
               help="model: softmax, mlp or baseline (default: the server's)")
    add_option(parser, "--version", type=version_number, default=0, metavar="N",
               help="model version (0 = newest)")
