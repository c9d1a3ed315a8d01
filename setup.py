"""Builds the native gRPC front door (``serving/native/frontdoor.cc``) against the system's
gRPC C++ library (Debian: ``g++ pkg-config libgrpc++-dev``). Everything else about the package
is in pyproject.toml.

Without gRPC C++ the package still installs, without the front door: ``--transport native``
(the default) then refuses to start and says why, and ``--transport grpcio`` serves.
"""

import shlex
import subprocess
import sys

from setuptools import Extension, setup


def grpc_flags(option: str) -> list[str] | None:
    try:
        result = subprocess.run(["pkg-config", option, "grpc++", "grpc"], check=True,
                                capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(result.stdout)


compile_flags, link_flags = grpc_flags("--cflags"), grpc_flags("--libs")
extensions = []
if compile_flags is None or link_flags is None:
    print("warning: gRPC C++ not found by pkg-config (Debian: apt-get install g++ pkg-config "
          "libgrpc++-dev); building without the native front door", file=sys.stderr)
else:
    extensions.append(Extension(
        "serving.native._frontdoor",
        sources=["serving/native/frontdoor.cc"],
        extra_compile_args=["-std=c++20", "-O2", "-fvisibility=hidden", *compile_flags],
        extra_link_args=link_flags,
        language="c++",
    ))

setup(ext_modules=extensions)
