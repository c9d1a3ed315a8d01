#!/bin/sh
# Prints the Debian packages that hold the shared libraries which the compiled extensions under
# VENV link (the gRPC C++ libraries of the native gRPC server), one per line, so that the
# runtime image installs exactly those and no compiler or headers.
#   deploy/native-packages.sh VENV
set -eu
find "${1:?usage: native-packages.sh VENV}" -path '*/serving/native/*.so' -exec ldd {} + \
    | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' \
    | sort -u \
    | while read -r library; do
        # merged /usr: dpkg may know the file under /lib or under /usr/lib
        dpkg -S "$library" 2>/dev/null || dpkg -S "${library#/usr}" 2>/dev/null \
            || dpkg -S "/usr$library" 2>/dev/null || true
    done \
    | cut -d: -f1 | sort -u
