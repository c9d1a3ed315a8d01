"""``fmnist-train``: fit, evaluate and export the three models, and write the report.

Every flag can also be set by an environment variable ``FMNIST_<FLAG>`` (``--train-subset`` is
``FMNIST_TRAIN_SUBSET``); a flag on the command line wins over the variable.
"""

import argparse
import datetime
import functools
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import onnx

from common.flags import add_option
from training.data import Dataset
from training.models import MLP_DEFAULTS, SOFTMAX_DEFAULTS, BaselineSettings, KerasSettings
from training.preprocessing import preprocess
from training.report import ModelOutcome

MODEL_NAMES = ("softmax", "mlp", "baseline")
PROGRESS = {"bar": 1, "epoch": 2, "none": 0}
DESCRIPTION = """\
Train the Fashion-MNIST classifiers, export them to ONNX into a model repository and write a
report (test accuracy, per-class precision/recall/F1, confusion matrices, pictures).

Models: softmax (Keras softmax regression), mlp (Keras multi-layer perceptron) and baseline
(scikit-learn SGDClassifier with log loss). 20% of the training images are held out for
validation (early stopping); the 10,000 test images are used only for the final evaluation.
Each run adds a new version: DIR/<model>/<version>/model.onnx + model.json.
"""

EPILOG = """\
examples:
  fmnist-train --out model_repository                     defaults (all three models)
  fmnist-train --out /tmp/repo --train-subset 2000 --epochs 2   a quick smoke run
  fmnist-train --out /tmp/repo --models mlp --mlp-hidden 512 --mlp-dropout 0.2
  original seed settings (5 epochs, default RMSprop, max_iter=5, no early stopping):
  fmnist-train --out /tmp/repo --epochs 5 --optimizer rmsprop --learning-rate 0.001 \\
      --lr-schedule none --patience 0 --baseline-max-iter 5

The data is read from --data-dir, /usr/share/datasets/fashion-mnist (apt-get install
dataset-fashion-mnist) or ~/.keras/datasets/fashion-mnist.
Every flag has an environment variable: FMNIST_ + the flag in capitals with - as _,
e.g. FMNIST_EPOCHS=3 or FMNIST_MLP_BATCH_SIZE=256.
"""


class OneLineErrorParser(argparse.ArgumentParser):
    """Reports a bad flag in one line (with a pointer to --help) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def fraction(value: str) -> float:
    number = float(value)
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return number


def optional_float(value: str) -> float | None:
    return None if value.lower() in {"", "none", "default"} else float(value)


KERAS_OPTIONS = {  # KerasSettings field: (type, metavar, help); bool fields get --x/--no-x
    "hidden": (layer_widths, "WIDTHS", "hidden layer widths, comma-separated"),
    "dropout": (float, "P", "dropout rate after each hidden layer"),
    "batch_norm": (bool, None, "batch normalisation after each hidden layer"),
    "epochs": (positive_int, "N", "maximum epochs"),
    "batch_size": (positive_int, "N", "mini-batch size"),
    "optimizer": (str, "NAME", "Keras optimizer name, e.g. adam, rmsprop, sgd"),
    "learning_rate": (optional_float, "LR", "initial learning rate ('default': the optimizer's)"),
    "lr_schedule": (str, "NAME", "learning-rate schedule: none, or cosine (decays to 0)"),
    "patience": (
        int,
        "N",
        "early stopping: stop after N epochs without a better validation "
        "accuracy and restore the best epoch's weights (0: off, run all epochs)",
    ),
    "flip_augment": (bool, None, "also train on left-right mirrored images (2x data per epoch)"),
}
MLP_ONLY = {"hidden", "dropout", "batch_norm"}


def add_keras_option(group, field_name: str, flag: str, dest: str, default) -> None:
    kind, metavar, help_text = KERAS_OPTIONS[field_name]
    if default is not argparse.SUPPRESS:
        help_text += f" (default: {format_default(default)})"
    if kind is bool:
        add_option(
            group, flag, dest=dest, action=argparse.BooleanOptionalAction, default=default,
            help=help_text,
        )
    else:
        choices = ("none", "cosine") if field_name == "lr_schedule" else None
        add_option(
            group,
            flag,
            dest=dest,
            type=kind,
            default=default,
            metavar=metavar,
            choices=choices,
            help=help_text,
        )


def build_parser() -> argparse.ArgumentParser:
    """Every flag, each also read from its env var (common.flags)."""
    parser = OneLineErrorParser(
        prog="fmnist-train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    try:
        add_options(parser)
    except ValueError as error:  # a bad FMNIST_* value, reported like a bad flag
        parser.error(str(error))
    return parser


def add_options(parser: argparse.ArgumentParser) -> None:
    softmax, mlp, baseline = SOFTMAX_DEFAULTS, MLP_DEFAULTS, BaselineSettings()

    add = functools.partial(add_option, parser)
    add(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="model repository to add the new model versions to (created if missing)",
    )
    add(
        "--models",
        type=model_list,
        default=MODEL_NAMES,
        metavar="LIST",
        help="comma-separated models to train (default: softmax,mlp,baseline)",
    )
    add(
        "--report-dir",
        type=Path,
        metavar="DIR",
        help="where to write the report (default: DIR/reports/<UTC timestamp>/)",
    )
    add(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="directory with the four Fashion-MNIST .gz files (default: searched, see below)",
    )
    add(
        "--train-subset",
        type=positive_int,
        metavar="N",
        help="use only the first N training images (for quick tests; default: all 60000)",
    )
    add(
        "--validation-split",
        type=fraction,
        default=0.2,
        metavar="F",
        help="share of the training images held out for validation (default: 0.2)",
    )
    add(
        "--split-seed",
        type=int,
        default=42,
        metavar="N",
        help="random_state of the train/validation split (default: 42)",
    )
    add(
        "--seed",
        type=int,
        default=42,
        metavar="N",
        help="seed of the model initialisation and shuffling; same seed, same models (default: 42)",
    )
    add(
        "--progress",
        choices=PROGRESS,
        default="bar",
        help="Keras output while fitting: a progress bar, one line per epoch, or none",
    )
    add("--debug", action="store_true", help="show the Python traceback on errors")

    both = parser.add_argument_group(
        "both Keras models (override the per-model settings below when given)"
    )
    for field_name in [f for f in KERAS_OPTIONS if f not in MLP_ONLY]:
        flag = "--" + field_name.replace("_", "-")
        add_keras_option(both, field_name, flag, field_name, argparse.SUPPRESS)
    for name, settings, title in (("softmax", softmax, "softmax model"), ("mlp", mlp, "MLP")):
        group = parser.add_argument_group(f"{title} (--models {name})")
        for field_name in KERAS_OPTIONS:
            if name == "softmax" and field_name in MLP_ONLY:
                continue
            flag = f"--{name}-{field_name.replace('_', '-')}"
            dest = f"{name}_{field_name}"
            add_keras_option(group, field_name, flag, dest, getattr(settings, field_name))

    group = parser.add_argument_group(
        "baseline (--models baseline): SGDClassifier(loss='log_loss')"
    )
    add_option(
        group,
        "--baseline-max-iter",
        type=positive_int,
        default=baseline.max_iter,
        metavar="N",
        help=f"epochs over the data (default: {baseline.max_iter})",
    )
    add_option(
        group,
        "--baseline-alpha",
        type=float,
        default=baseline.alpha,
        metavar="A",
        help=f"L2 regularisation strength (default: {baseline.alpha:g})",
    )
    add_option(
        group,
        "--baseline-tol",
        type=optional_float,
        default=baseline.tol,
        metavar="T",
        help=f"stop when the loss improves less than T "
        f"('none': always run max-iter; default: {baseline.tol:g})",
    )
    add_option(
        group,
        "--baseline-n-jobs",
        type=positive_int,
        default=baseline.n_jobs,
        metavar="N",
        help=f"CPU cores for the ten one-vs-rest problems (default: {baseline.n_jobs})",
    )


def format_default(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "the optimizer's own" if value is None else str(value)


def keras_settings(args: argparse.Namespace, name: str):
    """The KerasSettings of ``name`` from its flags, with the shared flags on top."""
    values = {}
    for spec in fields(KerasSettings):
        for dest in (f"{name}_{spec.name}", spec.name):  # shared flags exist only when given
            if hasattr(args, dest):
                values[spec.name] = getattr(args, dest)
    return KerasSettings(**values)


@dataclass
class Split:
    """The preprocessed train/validation/test pixels and labels of one run."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray


@dataclass
class Exported:
    """One fitted model's ONNX graph, library versions and what the report shows of it."""

    onnx_model: onnx.ModelProto
    framework: dict[str, str]
    outcome: ModelOutcome


def fit_and_export(name: str, args: argparse.Namespace, split: Split, dataset: Dataset) -> Exported:
    """Fits ``name``, exports it, and evaluates the exported graph on the raw test images."""
    from training import export, models, report

    if name == "baseline":
        settings = BaselineSettings(
            args.baseline_max_iter, args.baseline_alpha, args.baseline_tol, args.baseline_n_jobs
        )
        fitted = models.fit_baseline(settings, split.x_train, split.y_train, args.seed)
        print(f"fitted in {fitted.fit_seconds:.1f} s, {fitted.epochs_run} epochs", flush=True)
        onnx_model = export.baseline_to_onnx(fitted.model)
        reference = fitted.model.predict_proba(split.x_test)
        validation_accuracy = fitted.model.score(split.x_val, split.y_val)
        libraries = ("scikit-learn", "skl2onnx")
    else:
        settings = keras_settings(args, name)
        models.seed_everything(args.seed)
        fitted = models.fit_keras(
            settings,
            split.x_train,
            split.y_train,
            split.x_val,
            split.y_val,
            verbose=PROGRESS[args.progress],
        )
        onnx_model = export.keras_to_onnx(fitted.model)
        reference = fitted.model.predict(split.x_test, batch_size=1024, verbose=0)
        validation_accuracy = fitted.model.evaluate(
            split.x_val, split.y_val, batch_size=1024, verbose=0
        )[1]
        libraries = ("tensorflow", "keras", "tf2onnx")

    probabilities, labels = export.run_onnx(onnx_model, dataset.x_test)
    metrics = report.classification_metrics(dataset.y_test, labels)
    metrics |= {
        "validation_accuracy": round(float(validation_accuracy), 4),
        "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
        "onnx_max_abs_diff": float(np.max(np.abs(probabilities - reference))),
        "onnx_label_agreement": report.agreement(labels, reference.argmax(axis=1)),
    }
    training = asdict(settings) | {
        "seed": args.seed,
        "train_size": len(split.x_train),
        "validation_size": len(split.x_val),
        "train_subset": args.train_subset,
        "validation_split": args.validation_split,
        "split_seed": args.split_seed,
        "fit_seconds": round(fitted.fit_seconds, 1),
        "epochs_run": fitted.epochs_run,
        "best_epoch": fitted.best_epoch,
    }
    outcome = ModelOutcome(name, settings.describe(), labels, metrics, training, fitted.history)
    return Exported(onnx_model, export.framework_versions(onnx_model, libraries), outcome)


def train(args: argparse.Namespace) -> int:
    """The whole run: data, fit + export + evaluate each model, repository, report, table."""
    from training import data, report
    from training.repository import MODEL_FILE, write_version

    dataset = data.load(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)  # fail now, not after minutes of fitting
    subset = slice(args.train_subset)
    x_train, x_val, y_train, y_val = data.split_train_validation(
        dataset.x_train[subset], dataset.y_train[subset], args.validation_split, args.split_seed
    )
    split = Split(
        preprocess(x_train), y_train, preprocess(x_val), y_val, preprocess(dataset.x_test)
    )
    print(
        f"data: {dataset.source} ({len(x_train)} train, {len(x_val)} validation, "
        f"{len(dataset.x_test)} test images)",
        flush=True,
    )
    exported = {}
    for name in args.models:
        print(f"\n== {name}", flush=True)
        exported[name] = fit_and_export(name, args, split, dataset)

    if "baseline" in exported:
        for name, model in exported.items():
            if name != "baseline":
                model.outcome.metrics["agreement_with_baseline"] = report.agreement(
                    model.outcome.labels, exported["baseline"].outcome.labels
                )

    rows = []
    for name, model in exported.items():
        outcome = model.outcome
        manifest = {
            "description": outcome.description,
            "framework": model.framework,
            "training": outcome.training,
            "metrics": {
                k: v
                for k, v in outcome.metrics.items()
                if k not in {"per_class", "confusion_matrix"}  # in the report's metrics.json
            },
            "dataset": dataset.checksums(),
        }
        outcome.onnx_path = write_version(args.out, name, model.onnx_model, manifest) / MODEL_FILE
        size = f"{outcome.onnx_path.stat().st_size / 1024:.0f} KiB"
        rows.append((name, f"{outcome.metrics['test_accuracy']:.4f}", str(outcome.onnx_path), size))

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    report_file = report.write_report(
        args.report_dir or args.out / "reports" / stamp,
        [model.outcome for model in exported.values()],
        dataset.x_test,
        dataset.y_test,
        dataset.checksums(),
    )
    print()
    print_table(("model", "test accuracy", "ONNX file", "size"), rows)
    print(f"\nreport: {report_file}")
    return 0


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def import_tensorflow_quietly() -> None:
    """Keeps TensorFlow's C++ log lines (oneDNN and CUDA-driver notices, tf.data attribute
    warnings) off the terminal, unless the user set TF_CPP_MIN_LOG_LEVEL themselves.

    TF_CPP_MIN_LOG_LEVEL=3 covers the run, but the import-time lines are written before absl
    logging is set up and ignore it, so stderr goes to /dev/null during the import. Python
    errors and Keras' progress bars are unaffected.
    """
    import logging

    for name in ("tf2onnx", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    silence = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    if silence:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if set(args.models) - {"baseline"}:
            import_tensorflow_quietly()
        status = train(args)
    except KeyboardInterrupt:
        print("fmnist-train: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        message = (
            str(error)
            if type(error).__name__ == "DatasetError"
            else (f"{type(error).__name__}: {error}")
        )
        print(f"fmnist-train: error: {message}", file=sys.stderr)
        return 1
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
