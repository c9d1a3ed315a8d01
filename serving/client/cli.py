"""``fmnist`` / ``python -m serving.client``: classify images, score the test set, check health,
list models, against a running ``fmnist-serve``.

Only argparse is imported up front; each subcommand imports what it needs, so ``fmnist health``
(the container healthcheck) starts fast. Errors are one line on stderr and exit status 1 (2, as
argparse's own, for arguments or FMNIST_* values that cannot work). Every option has its
FMNIST_* variable (common.flags.add_option), but --test-index, which names what to classify as
the files do, and score's --batch-size: FMNIST_BATCH_SIZE is fmnist-train's Keras mini-batch,
and a shell or CI job holds both commands' variables.
"""

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from common.contract import CLASS_NAMES
from common.flags import (
    ArgumentParser,
    add_option,
    bearer_token,
    env_var,
    given,
    number_in,
    positive_int,
    positive_seconds,
    unrecognized,
    usage_error,
    warn_of_misspelt_variables,
)
from common.output import named_stdout
from common.paths import home_path
from serving.client import DEFAULT_TARGET, LB_POLICIES
from serving.client.arguments import (
    IndicesThenFiles,
    Placed,
    data_dir_flag,
    expected_accuracy,
    fraction,
    grpc_target,
    model_flags,
)
from serving.client.stops import said, sigterm_as_interrupt

DEFAULT_TIMEOUT = 30.0
CLASSIFY_BATCH = 256  # images per call of `fmnist classify` (or the server's limit, if lower)
COMMANDS = ("classify", "score", "health", "models")  # each made by _parser's command()
SCORE_BATCH = 1000  # `fmnist score`'s default --batch-size (likewise)
TOLERANCE = 1e-4  # `fmnist score`'s default --tolerance


class UsageError(ValueError):
    """Arguments that argparse cannot check alone: exit status 2, as for its own errors."""


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC C++'s own log lines (a failed handshake, an unresolvable name) would come before
    # the one line this command prints for the same error; set for this command only (a
    # process that calls main() keeps its own)
    own = "GRPC_VERBOSITY" not in os.environ
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:  # 2>&- leaves Python no sys.stderr, and print(file=None) wrote the errors and
        # warnings on stdout, among the results a script reads
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(sys.stderr or devnull):
            return _main(argv)
    finally:
        if own:
            os.environ.pop("GRPC_VERBOSITY", None)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parse(_parser(), argv)
    except ValueError as error:  # a variable near a guard's name (FMNIST_TOKN)
        print(usage_error("fmnist", error), file=sys.stderr)
        return 2
    warn_of_misspelt_variables("fmnist")
    try:  # a failed write names stdout, as --csv's names its flag
        with sigterm_as_interrupt(), named_stdout():
            return args.run(args)
    except UsageError as error:
        print(usage_error(f"fmnist {args.command}", error), file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM: one line, as fmnist-train says it
        words, status = said(stop)
        print(f"fmnist {args.command}: {words}", file=sys.stderr)
        return status
    except BrokenPipeError:  # the output went into `head` or the like, which stopped reading
        return 0  # what stdout held went to /dev/null (common.output): nothing fails at exit
    except Exception as error:  # one line, whatever went wrong; how far score got, if it began
        ended = f"; ended{error.progress}" if hasattr(error, "progress") else ""
        print(f"fmnist {args.command}: error: {_describe(error, args, argv)}{ended}",
              file=sys.stderr)
        return 1


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, but image files may follow options, as they may precede them:
    argparse takes one run of positional arguments, and `classify a.png --top 1 b.png` said
    'unrecognized arguments: b.png'."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # options before the command, as kubectl's and docker's: `fmnist --target X health` said
    # "invalid choice: 'X'" (the command's own options, wherever they are)
    first = next((i for i, arg in enumerate(argv) if arg in COMMANDS), 0)
    if argv and argv[0].startswith("-") and not first \
            and not {"-h", "--help", "--version"} & set(argv):  # argparse: "invalid choice: '1'"
        parser.error(f"no COMMAND after the options: give one of {', '.join(COMMANDS)}")
    if not {"-h", "--help"} & set(argv[:first]):
        argv = [*argv[first:first + 1], *argv[:first], *argv[first + 1:]]
    args, unparsed = parser.parse_known_args(
        [Placed(arg, place) for place, arg in enumerate(argv)])
    args.argv = argv  # an error names a value by the flag or the env var that gave it (given)
    if args.command != "classify" or any(arg.startswith("-") and arg != "-" for arg in unparsed):
        if unparsed:  # said by the command whose --help to look at
            args.parser.error(unrecognized(unparsed, args.parser._option_string_actions))
        return args
    if "" in [*args.files, *args.files_after, *unparsed]:  # not the current folder's pictures
        args.parser.error("FILE: expected a path, got '' (. is the current folder)")
    # the first run, those after --test-index's numbers, the rest: in the order given
    args.files = [Path(name) for name in sorted([*args.files, *args.files_after, *unparsed],
                                                key=lambda name: name.place)]
    return args


def _describe(error: Exception, args, argv: Sequence[str] | None) -> str:
    import grpc

    from serving.client.errors import NoAnswer

    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        details = _security(args).explained(error.code().name,
                                            error.details() or "the server gave no details",
                                            args.target)
        waited = f"from {args.target} in {given('--timeout', f'{args.timeout:g}', argv)} s"
        if details == "Deadline Exceeded":  # gRPC's words for a call's --timeout run out
            details += f" (no answer {waited})"
        elif isinstance(error, NoAnswer):  # a stream's answer's, said as a call's
            details = f"no answer {waited} (the timeout per answer)"
        return f"{error.code().name}: {details}"
    tls_files = {getattr(args, dest): f"--{dest.replace('_', '-')}"
                 for dest in ("tls_ca", "tls_cert", "tls_key") if getattr(args, dest)}
    if isinstance(error, OSError) and error.filename in tls_files:  # named by its flag or var
        return f"{given(tls_files[error.filename], error.filename, argv)}: {error.strerror}"
    # common.pem.check_pem_files names the files by their paths: "CERT and KEY: ..."
    for flags in (("--tls-cert", "--tls-key"), ("--tls-ca",)):
        paths = [getattr(args, flag[2:].replace("-", "_")) for flag in flags]
        said = " and ".join(map(str, paths))
        if isinstance(error, ValueError) and all(paths) and str(error).startswith(f"{said}: "):
            return " and ".join(map(given, flags, paths, [argv] * 2)) + str(error)[len(said):]
    return str(error) or type(error).__name__


def _security(args):
    from serving.client.security import ChannelSecurity

    if bool(args.tls_cert) != bool(args.tls_key):  # a usage error, not the server's failure
        given, missing = ("cert", "key") if args.tls_cert else ("key", "cert")
        raise UsageError(f"--tls-{given} ({env_var('tls_' + given)}) given without "
                         f"--tls-{missing} ({env_var('tls_' + missing)}): mutual TLS needs the "
                         "client certificate and its key")
    return ChannelSecurity(args.tls, args.tls_ca, args.tls_cert, args.tls_key, args.token,
                           args.tls_server_name)


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="fmnist",
        description="Client of the Fashion-MNIST classification service (fmnist-serve).",
        epilog="Examples: fmnist classify --test-index 0 1 2; fmnist classify shoe.png --invert; "
        "fmnist score --limit 1000; fmnist --target HOST:PORT health (options may come before "
        "COMMAND too); fmnist models. Options can also be set by env vars (FMNIST_<FLAG>, e.g. "
        "FMNIST_TARGET; fmnist COMMAND --help names each, or says why one has none); flags win.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_option(sub, "--target", type=grpc_target, default=DEFAULT_TARGET,
                   metavar="HOST:PORT", help="server address")
        add_option(sub, "--lb", choices=LB_POLICIES, default=LB_POLICIES[0],
                   help="how calls spread over the addresses the target resolves to: "
                   "round_robin sends each to the next (e.g. --target "
                   "dns:///NAME.NAMESPACE.svc.cluster.local:50051, a Kubernetes headless "
                   "Service)")
        add_option(sub, "--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT,
                   metavar="SECONDS",
                   help="seconds to wait for each answer (each of score's stream too)")
        security = sub.add_argument_group("security (flags win over env vars; none may be empty)")
        add_option(security, "--tls", action="store_true",
                   help="use TLS, trusting the system's CA certificates")
        for flag, file_help in (
            ("ca", "PEM CA certificate(s) to trust the server with; implies --tls"),
            ("cert", "PEM client certificate, for servers that require mutual TLS"),
            ("key", "PEM private key of --tls-cert"),
        ):
            add_option(security, f"--tls-{flag}", metavar="FILE", help=file_help,
                       type=os.path.expanduser)  # a str, as its errors name it; ~ as in home_path
        add_option(security, "--tls-server-name", metavar="NAME",
                   help="the name the server's certificate must carry, when the target's host "
                   "is not one of its names (a port-forward to 127.0.0.1); implies --tls")
        add_option(security, "--token", secret=True, type=bearer_token, metavar="TOKEN",
                   help="bearer token, for servers started with --auth-token (safer as the env "
                   "var: flags show in ps)")
        sub.set_defaults(run=run, parser=sub)
        return sub

    classify = command("classify", _classify,
                       "Classify images: PNG (or any image file), .npy arrays, or test-set images;"
                       " prints the top classes of the model and the baseline's answer.")
    classify.add_argument("files", nargs="*", metavar="FILE",
                          help="image files (any size/mode, made 28x28 grayscale) or .npy arrays "
                          "of uint8 [28,28], [N,28,28] or [N,784]; a folder: those in it, by "
                          "name; - reads one from stdin")
    classify.add_argument("--test-index", nargs="+", action=IndicesThenFiles, default=[],
                          metavar="I", help="also classify these images of the Fashion-MNIST "
                          "test set (0..9999); given again, adds more (no env var: like FILE, "
                          "what to classify)")
    classify.set_defaults(files_after=[])
    add_option(classify, "--invert", action="store_true",
               help="invert picture files (not .npy arrays) first: for dark objects on a light "
               "background (Fashion-MNIST has light objects on black)")
    data_dir_flag(classify)  # of --test-index
    model_flags(classify)
    add_option(classify, "--top", type=_top, default=3, metavar="N",
               help=f"how many classes to show (1..{len(CLASS_NAMES)})")

    score = command("score", _score,
                    "Batch-score the Fashion-MNIST test set through the server: accuracy of the "
                    "model and of the baseline, their agreement, images/s, latency.")
    model_flags(score)
    add_option(score, "--offset", type=_index, default=0, metavar="INDEX",
               help="first test image")
    add_option(score, "--limit", type=positive_int, default=None, metavar="N",
               help="how many images (default: all from --offset on)")
    score.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                       help=f"images per request (default: {SCORE_BATCH}, or the server's "
                       "--max-request-images if lower; no env var: FMNIST_BATCH_SIZE is "
                       "fmnist-train's)")
    add_option(score, "--rpc", choices=("stream", "unary"), default="stream",
               help="one ClassifyStream call, or one Classify call per batch")
    add_option(score, "--csv", type=home_path, metavar="FILE", help="write every prediction "
               "to this CSV file ('-': stdout, before the summary)")
    add_option(score, "--json", type=home_path, metavar="FILE",
               help="write the run's figures (accuracies, each class's, the confusion "
               "matrices, throughput, latency) to FILE as JSON, those of the images "
               "answered if the run is cut short (\"complete\": false); - (or "
               "/dev/stdout): the JSON alone on stdout, the summary on stderr")
    add_option(score, "--confusion-matrix", action="store_true",
               help="also print the model's confusion matrix and each class's accuracy")
    add_option(score, "--expect-accuracy", metavar="ACCURACY", type=expected_accuracy,
               help="exit 1 unless the model's accuracy is ACCURACY (a fraction, or "
               "'manifest' for the test_accuracy recorded at training) within --tolerance")
    add_option(score, "--tolerance", type=fraction, default=None, metavar="FRACTION",
               help=f"allowed difference for --expect-accuracy (default: {TOLERANCE:g})")
    # (default None, not TOLERANCE: scoring tells a --tolerance given without it)
    data_dir_flag(score)
    add_option(score, "--no-progress", action="store_true",
               help="no progress bar (there is none when stderr is not a terminal)")

    health = command("health", _health,
                     "Exit 0 if the server reports SERVING, 1 otherwise (container healthcheck).")
    add_option(health, "--service", default="", metavar="NAME",
               help="service to ask about ('' = the whole server)")

    command("models", _models, "List the model versions the server has loaded.")
    return parser


_top = number_in(int, 1, len(CLASS_NAMES), expected=f"1..{len(CLASS_NAMES)}")
_index = number_in(int, 0, expected="an index >= 0")


def _classify(args) -> int:
    from serving.client.classifying import classify

    return classify(args, _security(args))


def _score(args) -> int:
    from serving.client.scoring import score

    return score(args, _security(args))


def _health(args) -> int:
    from serving.client.status import health

    return health(args, _security(args))


def _models(args) -> int:
    from serving.client.status import models

    return models(args, _security(args))
