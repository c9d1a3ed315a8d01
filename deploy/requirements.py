"""Prints the requirements of one extra of pyproject.toml, one per line, for `pip install -r`.

The image installs dependencies in a layer of their own, built from this list rather than from
the project, so that editing the code does not reinstall them.
"""

import argparse
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extra: str) -> list[str]:
    """The project's base dependencies plus those of `extra`."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"][extra]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path, help="path to pyproject.toml")
    parser.add_argument("extra", help="the optional-dependencies group, e.g. serve or train")
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.extra)))


if __name__ == "__main__":
    main()
