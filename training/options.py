"""``fmnist-train``'s command line: its options (each also an env var ``FMNIST_<FLAG>``), their
types and checks, and the Keras settings of a model built from them."""

import argparse
import functools
import sys
from dataclasses import fields

from common.flags import (
    ArgumentParser,
    Refused,
    add_option,
    number_in,
    positive_int,
    typed,
)
from common.paths import home_path
from training.models import MLP_DEFAULTS, SOFTMAX_DEFAULTS, BaselineSettings, KerasSettings

MODEL_NAMES = ("softmax", "mlp", "baseline")
PROGRESS = {"bar": 1, "epoch": 2, "none": 0}
DESCRIPTION = """\
Train the Fashion-MNIST classifiers, export them to ONNX into a model
repository and write a report (test accuracy, per-class precision/recall/F1,
confusion matrices, pictures).

Models: softmax (Keras softmax regression), mlp (Keras multi-layer perceptron)
and baseline (scikit-learn SGDClassifier with log loss). 20% of the training
images are held out for validation (early stopping); the 10,000 test images are
used only for the final evaluation. Each run adds a new version:
DIR/<model>/<version>/model.onnx + model.json.
"""

EPILOG = """\
examples:
  defaults (all three models):
    fmnist-train --out model_repository
  a quick smoke run:
    fmnist-train --out /tmp/repo --train-subset 2000 --epochs 2
  a wider MLP alone:
    fmnist-train --out /tmp/repo --models mlp --mlp-hidden 512 --mlp-dropout 0.2
  original seed settings (5 epochs, default RMSprop, batch 32, max_iter=5, no
  early stopping):
    fmnist-train --out /tmp/repo --epochs 5 --optimizer rmsprop \\
        --learning-rate default --lr-schedule none --patience 0 \\
        --batch-size 32 --baseline-max-iter 5 --baseline-alpha 0.0001

The data is read from --data-dir, /usr/share/datasets/fashion-mnist (apt-get
install dataset-fashion-mnist) or ~/.keras/datasets/fashion-mnist, else Keras
downloads it there. Every flag has an environment variable: FMNIST_ + the flag
in capitals with - as _, e.g. FMNIST_EPOCHS=3 or FMNIST_MLP_BATCH_SIZE=256.
"""


class OneLineErrorParser(ArgumentParser):
    """common.flags' parser (one line per error), refusing a model's own flag beside both's."""

    def parse_args(self, args=None, namespace=None):
        """Also refuses a model's own flag beside the flag for both (--mlp-epochs 2 --epochs
        1), which would win: the model's own would be ignored without a word. A model's bad
        env var (FMNIST_MLP_EPOCHS=abc) is not refused where the flag for both replaces it."""
        for action in (action for action in self._actions if isinstance(action.default, Refused)):
            model, _, name = action.dest.partition("_")  # mlp_epochs: --epochs replaces it
            if model in ("softmax", "mlp") and any(
                    typed(f"--{no}{name.replace('_', '-')}", args) for no in ("", "no-")):
                action.default = argparse.SUPPRESS
        parsed = super().parse_args(args, namespace)
        for name in (f for f in KERAS_OPTIONS if f not in MLP_ONLY and hasattr(parsed, f)):
            flag = name.replace("_", "-")
            shared = next((f"--{no}{flag}" for no in ("", "no-") if typed(f"--{no}{flag}", args)),
                          f"--{flag}")
            own = [f"--{no}{model}-{flag}" for model in ("softmax", "mlp") for no in ("", "no-")]
            for given in (own_flag for own_flag in own if typed(own_flag, args)):
                self.error(f"{given} and {shared} both given: {shared} sets both Keras models'; "
                           "give one of them")
        return parsed


def comma_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def model_list(value: str) -> tuple[str, ...]:
    names = comma_list(value)
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(MODEL_NAMES)}"
        )
    return tuple(name for name in MODEL_NAMES if name in names)


def layer_widths(value: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(width) for width in comma_list(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 512,256, got {value!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths like 512,256, got {value!r}")
    return widths


# the optimizers Keras 3 names in lower case (keras.optimizers.get); a name is lower-cased
# first ("Adam" is "adam") and checked when parsed, not after minutes of fitting
OPTIMIZERS = ("adadelta", "adafactor", "adagrad", "adam", "adamax", "adamw", "ftrl",
              "lion", "muon", "nadam", "rmsprop", "sgd")


KERAS_OPTIONS = {  # KerasSettings field: (type, metavar, help); bool fields get --x/--no-x
    "hidden": (layer_widths, "WIDTHS", "hidden layer widths, comma-separated"),
    "dropout": (number_in(float, 0, 1, high_open=True), "P",
                "dropout rate after each hidden layer"),
    "batch_norm": (bool, None, "batch normalisation after each hidden layer"),
    "epochs": (positive_int, "N", "maximum epochs"),
    "batch_size": (positive_int, "N", "mini-batch size"),
    "optimizer": (str.lower, "NAME", "Keras optimizer name, e.g. adam, rmsprop, sgd"),
    "learning_rate": (number_in(float, 0, low_open=True, none_word="default"), "LR",
                      "initial learning rate ('default': the optimizer's)"),
    "lr_schedule": (str.lower, "NAME", "learning-rate schedule: none, or cosine (decays to 0)"),
    "patience": (
        number_in(int, 0),
        "N",
        "early stopping: stop after N epochs without a better validation "
        "accuracy and restore the best epoch's weights (0: off, run all epochs)",
    ),
    "flip_augment": (bool, None, "also train on left-right mirrored images (2x data per epoch)"),
}
MLP_ONLY = {"hidden", "dropout", "batch_norm"}


def add_keras_option(group, field_name: str, flag: str, dest: str, default) -> argparse.Action:
    kind, metavar, help_text = KERAS_OPTIONS[field_name]
    if default is not argparse.SUPPRESS:
        help_text += " (default: %(default)s)"
    if kind is bool:
        return add_option(group, flag, dest=dest, action=argparse.BooleanOptionalAction,
                          default=default, help=help_text)
    choices = {"lr_schedule": ("none", "cosine"), "optimizer": OPTIMIZERS}.get(field_name)
    return add_option(group, flag, dest=dest, type=kind, default=default, metavar=metavar,
                      choices=choices, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """Every flag, each also read from its env var (common.flags)."""
    parser = OneLineErrorParser(
        prog="fmnist-train",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    try:
        add_options(parser)
    except ValueError as error:  # a bad FMNIST_* value, reported like a bad flag
        parser.error(str(error))
    return parser


def add_options(parser: argparse.ArgumentParser) -> None:
    softmax, mlp, baseline = SOFTMAX_DEFAULTS, MLP_DEFAULTS, BaselineSettings()

    add = functools.partial(add_option, parser)
    add("--out", type=home_path, required=True, metavar="DIR",
        help="model repository to add the new model versions to (created if missing)")
    add("--models", type=model_list, default=MODEL_NAMES, metavar="LIST",
        help="comma-separated models to train")
    add(
        "--report-dir",
        type=home_path,
        metavar="DIR",
        help="where to write the report: a new or empty directory "
        "(default: DIR/reports/<UTC timestamp>/)",
    )
    add(
        "--data-dir",
        type=home_path,
        metavar="DIR",
        help="directory with the four Fashion-MNIST IDX files, .gz or not (default: searched, see "
        "below)",
    )
    add(
        "--train-subset",
        type=positive_int,
        metavar="N",
        help="use only the first N training images (for quick tests; default: all 60000)",
    )
    add("--validation-split", type=number_in(float, 0, 1, low_open=True, high_open=True),
        default=0.2, metavar="F", help="share of the training images held out for validation")
    add(
        "--split-seed",
        type=number_in(int, 0, 2**32 - 1),  # numpy's and sklearn's range
        default=42,
        metavar="N",
        help="random_state of the train/validation split",
    )
    add(
        "--seed",
        type=number_in(int, 0, 2**32 - 1),  # numpy's and sklearn's range
        default=42,
        metavar="N",
        help="seed of the model initialisation and shuffling; same seed, same models",
    )
    add(
        "--min-validation-accuracy",
        type=number_in(float, 0, 1),
        default=0.0,
        metavar="F",
        help="publish nothing unless every model of the run reaches this accuracy on the "
        "validation images (4 decimals), e.g. --models mlp --min-validation-accuracy 0.89 in a "
        "retraining job; with the defaults the models reach about softmax 0.87, mlp 0.91, "
        "baseline 0.85 (default: %(default)s; 0: better than always answering one class)",
    )
    add(
        "--progress",
        choices=PROGRESS,
        default="bar" if sys.stdout and sys.stdout.isatty() else "epoch",  # a bar floods a log
        help="output while fitting: Keras' progress bar and the baseline's seconds so far "
        "(default on a terminal), Keras' line per epoch (default otherwise), or none",
    )
    add("--debug", action="store_true", help="show the Python traceback on errors")

    both = parser.add_argument_group("both Keras models", (  # a title is never wrapped
        "A flag here sets both models: not with a per-model flag below. Its env var,\n"
        "e.g. FMNIST_EPOCHS, is only both models' default, under FMNIST_MLP_EPOCHS\n"
        "and the like."))
    shared_env = {}  # a shared option's env var: both models' default, under their own flags
    for field_name in [f for f in KERAS_OPTIONS if f not in MLP_ONLY]:
        flag = "--" + field_name.replace("_", "-")
        action = add_keras_option(both, field_name, flag, field_name, argparse.SUPPRESS)
        if action.default is not argparse.SUPPRESS and not isinstance(action.default, Refused):
            shared_env[field_name], action.default = action.default, argparse.SUPPRESS
        # a bad value stays its own default: refused unless this flag replaces it (the models'
        # defaults would be refused whatever flag was given)
    for name, settings, title in (("softmax", softmax, "softmax model"), ("mlp", mlp, "MLP")):
        group = parser.add_argument_group(f"{title} (--models {name})")
        for field_name in KERAS_OPTIONS:
            if name == "softmax" and field_name in MLP_ONLY:
                continue
            flag = f"--{name}-{field_name.replace('_', '-')}"
            dest = f"{name}_{field_name}"
            add_keras_option(group, field_name, flag, dest,
                             shared_env.get(field_name, getattr(settings, field_name)))

    group = parser.add_argument_group(
        "baseline (--models baseline): SGDClassifier(loss='log_loss')"
    )
    add_option(
        group,
        "--baseline-max-iter",
        type=positive_int,
        default=baseline.max_iter,
        metavar="N",
        help="epochs over the data",
    )
    add_option(
        group,
        "--baseline-alpha",
        type=number_in(float, 0, low_open=True),  # SGDClassifier's "optimal" rate divides by it
        default=baseline.alpha,
        metavar="A",
        help="L2 regularisation strength",
    )
    add_option(
        group,
        "--baseline-tol",
        type=number_in(float, 0, none_word="none"),
        default=baseline.tol,
        metavar="T",
        help="stop when the loss improves less than T ('none': always run max-iter; default: "
        "%(default)s)",
    )
    add_option(
        group,
        "--baseline-n-jobs",
        type=positive_int,
        default=baseline.n_jobs,
        metavar="N",
        help="CPU cores for the ten one-vs-rest problems",
    )


def keras_settings(args: argparse.Namespace, name: str):
    """The KerasSettings of ``name`` from its flags, with the shared flags on top."""
    values = {}
    for spec in fields(KerasSettings):
        for dest in (f"{name}_{spec.name}", spec.name):  # shared flags exist only when given
            if hasattr(args, dest):
                values[spec.name] = getattr(args, dest)
    return KerasSettings(**values)
