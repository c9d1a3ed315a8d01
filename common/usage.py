"""What a command line says of a usage error (exit status 2), the same for the three commands
(fmnist-train, fmnist-serve, fmnist): one line, ``common.flags.ArgumentParser.error``'s too."""

import difflib
from collections.abc import Iterable, Sequence


def usage_error(program: str, message) -> str:
    """Every command's usage error (exit status 2): the program, what is wrong, where to look."""
    return f"{program}: error: {message} (see {program} --help)"


def unrecognized(args: Sequence[str], flags: Iterable[str] = ()) -> str:
    """argparse's "unrecognized arguments: ..." without what may be an unknown flag's value:
    a mistyped --auth-token's secret went to stderr, hence to the logs. The flags are named,
    the words after the first one (but --flags) and a flag's "=..." (-x's "...") counted, not
    shown: a token may start with "-". Then those of ``flags`` (the command's) that an unknown
    one begins (no flag is abbreviated: `--epoch` is "--epochs, --mlp-epochs or ...?"), or else
    the one it nearly spells (`--tpo`: "--top?")."""
    shown, hidden = [], 0
    for arg in args:
        after_flag = any(word.startswith("-") for word in shown)
        if arg.startswith("--") or (arg.startswith("-") and not after_flag):
            name = arg.partition("=")[0] if arg.startswith("--") else arg[:2]
            shown.append(name)
            hidden += name != arg
        elif after_flag:  # a flag's value, maybe
            hidden += 1
        else:
            shown.append(arg)
    flags = [flag for flag in flags if flag.startswith("--")]
    near = list(dict.fromkeys(match for name in shown if name.startswith("--") for match in (
        [flag for flag in flags if flag.startswith(name)]
        or difflib.get_close_matches(name, flags, n=1, cutoff=0.75))))
    return f"unrecognized arguments: {' '.join(shown)}" + (
        f" ({hidden} value{'s' if hidden > 1 else ''} not shown)" if hidden else "") + (
        f"; did you mean {' or '.join(filter(None, (', '.join(near[:-1]), near[-1])))}?"
        if near else "")
