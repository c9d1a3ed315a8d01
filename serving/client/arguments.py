"""How ``fmnist classify`` takes image files anywhere among its options, in the order given."""

import argparse


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
