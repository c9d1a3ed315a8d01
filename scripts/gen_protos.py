"""Generate the Python gRPC code from protos/, or check that the committed code is current.

The generated modules live beside their .proto files (protos/<package path>/), compiled with
``-I protos`` so their imports (``from fashion_mnist.v1 import ...``) need no patching.
Usage: ``python scripts/gen_protos.py`` to regenerate, ``--check`` to fail if it would change.
"""

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent.parent / "protos"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> None:
    proto_files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *proto_files]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def generated_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.name.endswith(SUFFIXES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if regenerating would change it")
    args = parser.parse_args()
    if not args.check:
        generate(PROTOS)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        expected, committed = generated_files(fresh), generated_files(PROTOS)
        stale = sorted(str(p) for p in expected ^ committed
                       if not (p in expected and p in committed))
        stale += sorted(str(p) for p in expected & committed
                        if not filecmp.cmp(fresh / p, PROTOS / p, shallow=False))
        if stale:
            sys.exit("generated code is out of date (run python scripts/gen_protos.py): "
                     + ", ".join(stale))
        shutil.rmtree(fresh, ignore_errors=True)
    print("generated protobuf code is up to date")


if __name__ == "__main__":
    main()
