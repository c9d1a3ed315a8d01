"""Builds the native gRPC server (``serving/native/*.cc`` -> ``serving.native._server``)
against the system's gRPC C++ library (Debian: ``g++ pkg-config libgrpc++-dev``). Everything
else about the package is in pyproject.toml.

Without gRPC C++ (or a compiler) the package still installs, without the native server: the
server then serves with grpcio and its start-up log says ``transport=grpcio``.
"""

import glob
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def grpc_flags(option: str) -> list[str] | None:
    try:
        result = subprocess.run(["pkg-config", option, "grpc++", "grpc"], check=True,
                                capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(result.stdout)


class OptionalBuildExt(build_ext):
    """A native server that does not compile is left out, never a failed install."""

    def build_extension(self, extension):
        try:
            super().build_extension(extension)
        except Exception as error:  # any compiler or linker failure
            print(f"warning: native gRPC server not built ({error}); grpcio will serve",
                  file=sys.stderr)


compile_flags, link_flags = grpc_flags("--cflags"), grpc_flags("--libs")
extensions = []
if compile_flags is None or link_flags is None:
    print("warning: gRPC C++ not found by pkg-config (Debian: apt-get install g++ pkg-config "
          "libgrpc++-dev); building without the native gRPC server", file=sys.stderr)
else:
    extensions.append(Extension(
        "serving.native._server",
        sources=sorted(glob.glob("serving/native/*.cc")),
        extra_compile_args=["-std=c++20", "-O2", "-fvisibility=hidden", *compile_flags],
        extra_link_args=link_flags,
        language="c++",
    ))

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
