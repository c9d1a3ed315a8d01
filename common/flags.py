"""The one way the command lines (fmnist-train, fmnist-serve, fmnist) read env vars: an option
whose argparse ``dest`` is ``max_batch_size`` is also ``FMNIST_MAX_BATCH_SIZE``; the flag wins
over the env var, which wins over the default. Containers and CI configure by env vars, people
by flags, and both must mean the same."""

import argparse
import difflib
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence

from common import __version__
from common.helptext import DefaultsHelpFormatter, Refused
from common.output import StdoutError, named_stdout
from common.usage import unrecognized, usage_error

ENV_PREFIX = "FMNIST_"
READ: set[str] = set()  # the env vars of the options added so far (add_option)
GUARDS: set[str] = set()  # those of them that guard a server or a client's calls: token, TLS
SWITCH_WORDS = {"1": True, "true": True, "yes": True, "on": True,
                "0": False, "false": False, "no": False, "off": False}


def env_var(name: str) -> str:
    """An option's dest or flag -> its variable: ``tls_ca`` or ``--tls-ca`` -> ``FMNIST_TLS_CA``."""
    return ENV_PREFIX + name.removeprefix("--").replace("-", "_").upper()


def add_option(container, *names: str, environ: Mapping[str, str] | None = None,
               secret: bool = False, **kwargs) -> argparse.Action:
    """``container.add_argument(*names, **kwargs)`` (a parser, subcommand parser or argument
    group) for an option that also reads its env var (``os.environ`` unless ``environ``).

    The env var ends the help, with its value if set (a default told in words hid it). Set and
    not empty, it is the default, converted by the option's ``type`` and checked against its
    ``choices`` as the flag's value would be, and a required option is satisfied; set but empty,
    it counts as unset (a guard's, and its flag's "", are refused); a switch is on for 1, true,
    yes or on, off for 0, false, no or off. A bad value is an error naming the variable, with
    what its ``type`` says, e.g. ``FMNIST_PORT: expected an integer >= 0 and <= 65535, got x``
    (a plain ``int`` type: ``invalid int value: 'x'``), said by ``ArgumentParser`` as a bad flag
    is (without ``exit_on_error``: a ValueError) once it has parsed the command line, and only
    if the flag was not given there (the flag wins: a bad FMNIST_TARGET failed `fmnist health
    --target GOOD`). A variable near a guard's name is a ValueError here, for the caller to say
    as a usage error. A ``secret``'s value (a token) never shows in --help.
    """
    guard = secret or names[0].startswith("--tls")  # a token, TLS (--tls: a switch, no value)
    action = container.add_argument(*names, **({"action": _Guarded} if guard else {}) | kwargs)
    variable = env_var(action.dest)
    READ.add(variable)
    source = os.environ if environ is None else environ
    if guard:  # a guard whose variable was misspelt went missing with a warning: a server
        GUARDS.add(variable)  # took every call unchecked
        for name, _ in near_misses(dict.fromkeys(set(source) - READ, ""), [variable]):
            raise ValueError(f"{name}: not a setting; did you mean {variable}? (refused, not "
                             "ignored: without it the server or the calls go unguarded)")
    raw = source.get(variable)
    if guard and raw == "":  # an empty Secret, or a compose file's unset ${VAR}: a token or
        # TLS file that silently went missing turned the check off, or served plaintext
        action.default = Refused(ValueError(f"{variable}: set but empty; unset it to go "
                                            "without one"))
    elif raw:
        try:
            action.default = _convert(action, variable, raw)
        except ValueError as error:
            action.default = Refused(error)
    action.required = action.required and not raw
    shown = raw and not secret and not isinstance(action.default, Refused)  # (refused: said)
    action.env_tag = f"[env {variable}{f'={raw}' * bool(shown)}]"
    action.help = " ".join(filter(None, (action.help, action.env_tag.replace("%", "%%"))))
    if secret:  # a help holding "%(default)" is left alone by ArgumentDefaultsHelpFormatter
        action.help += "%(default).0s"
    return action


class _Guarded(argparse.Action):
    """A guard's flag, refused empty as its variable is: `--tls-cert "$CERT"` served plaintext."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not values:
            raise argparse.ArgumentError(self, "empty (an unset variable?); leave the flag out "
                                         "to go without one")
        setattr(namespace, self.dest, values)


def unread_env_var_warnings(program: str, also: Iterable[str] = (),
                            near_only: bool = False) -> list[str]:
    """What ``program`` says of each ``FMNIST_*`` variable that no option added so far reads,
    nor ``also`` (a misspelt one, FMNIST_METRIC_PORT, was ignored without a word), naming the
    one it nearly spells; ``near_only``: of those only (a shell holds the other commands' too)."""
    read = READ | set(also)
    near = dict(near_misses(os.environ, read))
    return [f"{name}: not a setting of {program}"
            + (f" (did you mean {near[name]}?)" if name in near else "") + "; ignored"
            for name in sorted(os.environ) if name in near
            or (not near_only and name.startswith(ENV_PREFIX) and name not in read)]


NEAR = 0.92  # difflib's ratio: FMNIST_EPOCH is 0.96 of FMNIST_EPOCHS; no variable of one
# command reaches it against another's (FMNIST_BASELINE_MODEL: 0.90 of fmnist-train's) but:
BOTH_MEANT = {"FMNIST_MODEL", "FMNIST_MODELS"}  # fmnist's model to ask, fmnist-train's to train


def near_misses(environ: Mapping[str, str], read: Iterable[str]) -> list[tuple[str, str]]:
    """(variable, the one of ``read`` it nearly spells) for each FMNIST_* variable of
    ``environ`` not in ``read`` but near one of it."""
    read = sorted(read)
    return [(name, near[0]) for name in sorted(environ)
            if name.startswith(ENV_PREFIX) and name not in read and name not in BOTH_MEANT
            and (near := difflib.get_close_matches(name, read, n=1, cutoff=NEAR))]


def warn_of_misspelt_variables(program: str) -> None:
    """FMNIST_MLP_EPOCH=40 was ignored without a word, and the run went on with the default.
    Only near misses of the options added so far are said: a shell or container also holds
    the other commands' variables (FMNIST_PORT)."""
    for line in unread_env_var_warnings(program, near_only=True):
        print(f"{program}: warning: {line}", file=sys.stderr, flush=True)


def given(flag: str, value, argv: Sequence[str] | None = None) -> str:
    """``flag value`` as the user gave it: ``--out x`` when ``flag`` is on the command line
    ``argv`` (default ``sys.argv[1:]``), else ``FMNIST_OUT=x`` if that is set, so that an error
    points where to change it (a container's or CI job's variables), not at a flag nobody
    typed. A switch's ``value`` is None: ``--invert``, or ``FMNIST_INVERT=1`` as it is set."""
    variable = env_var(flag)
    if os.environ.get(variable) and not typed(flag, argv):
        return f"{variable}={os.environ[variable] if value is None else value}"
    return flag if value is None else f"{flag} {value}"


def typed(flag: str, argv: Sequence[str] | None = None) -> bool:
    """Whether ``flag`` is on the command line ``argv`` (default ``sys.argv[1:]``): no flag is
    abbreviated (``ArgumentParser``)."""
    return any(arg.split("=", 1)[0] == flag for arg in (sys.argv[1:] if argv is None else argv))


def _convert(action: argparse.Action, variable: str, raw: str):
    if action.nargs == 0:
        if raw.strip().lower() not in SWITCH_WORDS:
            raise ValueError(f"{variable}: expected 1, true, yes, on, 0, false, no or off, "
                             f"got {raw!r}")
        return SWITCH_WORDS[raw.strip().lower()]
    try:
        value = action.type(raw) if action.type else raw
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"{variable}: {error}") from None
    except (TypeError, ValueError):
        kind = getattr(action.type, "__name__", repr(action.type))
        raise ValueError(f"{variable}: invalid {kind} value: {raw!r}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        raise ValueError(f"{variable}: invalid choice: {raw!r} (choose from {choices})")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """The command lines' parser (and their subcommands'): each option's default shown unless
    told otherwise (``DefaultsHelpFormatter``), errors in one line (``error``), unknown flags
    named without their values (``unrecognized``), the package's --version (a command's, not
    its subcommands': ``fmnist classify --version 2`` is the model's); no flag abbreviated
    (`--epoch` was --epochs: a script's would become another flag once one began alike)."""

    def __init__(self, *args, formatter_class=DefaultsHelpFormatter, version=True, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, allow_abbrev=False, **kwargs)
        if version:
            self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    def add_subparsers(self, **kwargs):
        return super().add_subparsers(
            parser_class=lambda **options: type(self)(version=False, **options), **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """An env var's bad value that no flag replaced (``add_option``) is said as a bad flag
        is, by the (sub)command whose option it is (``exit_on_error=False``: a ValueError)."""
        parsed, extras = super().parse_known_args(args, namespace)
        for refused in (value for value in vars(parsed).values() if isinstance(value, Refused)):
            if not self.exit_on_error:
                raise refused.error
            self.error(str(refused.error))
        return parsed, extras

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized(extras, self._option_string_actions))
        return parsed

    def _print_message(self, message, file=None):
        """argparse's, but a help or version that cannot be written (`--help > /dev/full`) is
        said, exit 1 (argparse drops the error: exit 0, as if shown); a stopped reader (`| head`)
        is not."""
        if file is not sys.stdout or sys.stdout is None:
            return super()._print_message(message, file)
        try:
            with named_stdout(keep_running=True):
                sys.stdout.write(message)
        except StdoutError as error:
            self.exit(1, f"{self.prog}: error: {error}\n")

    def error(self, message: str):
        """``usage_error``'s line, not a usage block; "argument --top: " as "--top: " (as an env
        var's)."""
        self.exit(2, f"{usage_error(self.prog, message.removeprefix('argument '))}\n")


def number_in(kind: type, low: float = -math.inf, high: float = math.inf, *,
              low_open: bool = False, high_open: bool = False, none_word: str = "",
              expected: str = ""):
    """An argparse ``type``: a ``kind`` (int or float) from ``low`` to ``high``, each bound
    included unless ``*_open``, never nan or inf; ``none_word`` (e.g. 'none') is None, and
    only that word: "--baseline-tol default" meant no tolerance, not the default one. Its
    error says ``expected`` (default: the kind and its bounds, "an integer >= 0")."""
    shown = str if kind is int else "{:g}".format  # 2**63 - 1 in full, not 9.22337e+18
    bounds = " and ".join(filter(None, (
        f"{'>' if low_open else '>='} {shown(low)}" if low > -math.inf else "",
        f"{'<' if high_open else '<='} {shown(high)}" if high < math.inf else "")))
    expected = expected or f"{'an integer' if kind is int else 'a number'} {bounds}" + (
        f" or '{none_word}'" if none_word else "")

    def parse(text: str):
        if none_word and text.strip().lower() == none_word:
            return None
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not ((low < value if low_open else low <= value)
                and (value < high if high_open else value <= high)
                and (kind is int or math.isfinite(value))):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = kind.__name__
    parse.none_word = none_word  # None's word, in --help (DefaultsHelpFormatter)
    return parse


positive_int = number_in(int, 1, expected="a positive integer")
# inf, nan or 0 seconds would make every wait end at once or never; past a day, gRPC's deadline
# soon overflows (1e10 s, or score's stream of 10,000 answers at 1e6 s each) and fails at once
positive_seconds = number_in(float, 0, 24 * 3600, low_open=True,
                             expected="seconds > 0 and <= 86400 (a day)")


def bearer_token(text: str) -> str:
    """An argparse ``type`` for ``--auth-token`` (server) and ``--token`` (client): a token
    either side can send. White space around it (a Secret file's last newline) or anything but
    printable ASCII (a passphrase's "ö", a tab) fails every call: gRPC's own INTERNAL "Invalid
    metadata" on the client, and over HTTP a Latin-1 header that never matches. The error
    never shows the token."""
    if text != text.strip() or not (text.isascii() and text.isprintable()):
        raise argparse.ArgumentTypeError("begins or ends with white space (a file's last "
                                         "newline?) or is other than printable ASCII: no "
                                         "gRPC or HTTP client can send it")
    return text
