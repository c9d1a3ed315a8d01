"""``fmnist-train``: fit, evaluate and export the three models, and write the report.

Every flag can also be set by an environment variable ``FMNIST_<FLAG>`` (``--train-subset`` is
``FMNIST_TRAIN_SUBSET``); a flag on the command line wins over the variable.
"""

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from common.flags import given, warn_of_misspelt_variables
from common.output import StdoutError, end_open_line
from training.checks import TrainingError, check_worth_publishing
from training.console import output_that_may_close, print_table, say_removed
from training.data import Dataset, DatasetError
from training.models import BaselineSettings, import_tensorflow_quietly
from training.options import PROGRESS, build_parser, keras_settings
from training.preprocessing import preprocess
from training.report import ModelOutcome
from training.repository import RepositoryError, make_directory, new_report_dir
from training.staging import STAGING, remove_abandoned
from training.stops import Terminated, handle, handlers_given_back, terminate


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
    from training import console, export, models, report

    if name == "baseline":
        settings = BaselineSettings(
            args.baseline_max_iter, args.baseline_alpha, args.baseline_tol, args.baseline_n_jobs
        )
        print(f"fitting SGDClassifier on {len(split.x_train)} images: ten one-vs-rest problems of "
              f"up to {console.count(settings.max_iter, 'epoch')}, {min(settings.n_jobs, 10)} "
              "at a time", flush=True)  # it shows no progress of its own
        with console.seconds_so_far(args.progress == "bar" and sys.stdout.isatty()):
            fitted = models.fit_baseline(settings, split.x_train, split.y_train, args.seed)
        unconverged = fitted.epochs_run >= args.baseline_max_iter and args.baseline_tol is not None
        print(f"fitted in {fitted.fit_seconds:.1f} s, "
              f"{console.count(fitted.epochs_run, 'epoch')}" + (
            " (--baseline-max-iter's limit, before --baseline-tol said it converged)"
            if unconverged else ""), flush=True)
        onnx_model = export.baseline_to_onnx(fitted.model)
        reference = fitted.model.predict_proba(split.x_test)
        validation_accuracy = fitted.model.score(split.x_val, split.y_val)
        libraries = ("scikit-learn", "skl2onnx")
    else:
        settings = keras_settings(args, name)
        # the optimizer's default rate, as a number in model.json and the report
        settings = replace(settings, learning_rate=models.learning_rate_of(settings))
        models.seed_everything(args.seed)
        fitted = models.fit_keras(
            settings,
            split.x_train,
            split.y_train,
            split.x_val,
            split.y_val,
            verbose=PROGRESS[args.progress],
        )
        print(f"fitted in {fitted.fit_seconds:.1f} s, " + console.fit_epochs(
            fitted.epochs_run, settings.epochs, settings.patience, fitted.best_epoch,
            fitted.stopped_early), flush=True)
        onnx_model = export.keras_to_onnx(fitted.model)
        reference = fitted.model.predict(split.x_test, batch_size=1024, verbose=0)
        validation_accuracy = fitted.model.evaluate(
            split.x_val, split.y_val, batch_size=1024, verbose=0
        )[1]
        libraries = ("tensorflow", "keras", "tf2onnx")

    probabilities, labels = export.run_onnx(onnx_model, dataset.x_test)
    check_worth_publishing(name, reference, probabilities, validation_accuracy, split.y_val,
                           minimum=args.min_validation_accuracy, labels=labels, argv=args.argv)
    metrics = report.classification_metrics(dataset.y_test, labels)
    metrics |= {
        "validation_accuracy": round(float(validation_accuracy), 4),
        "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
        "onnx_max_abs_diff": float(np.max(np.abs(probabilities - reference))),
        "onnx_label_agreement": report.agreement(labels, reference.argmax(axis=1)),
    }
    print(f"exported to ONNX: test accuracy {metrics['test_accuracy']:.4f}; its labels are the "
          f"fitted model's for {metrics['onnx_label_agreement']:.2%} of the test images",
          flush=True)
    training = asdict(settings) | {
        "seed": args.seed,
        "train_size": len(split.x_train),
        "validation_size": len(split.x_val),
        "train_subset": args.train_subset and min(args.train_subset, len(dataset.x_train)),
        "validation_split": args.validation_split,
        "split_seed": args.split_seed,
        "fit_seconds": round(fitted.fit_seconds, 1),
        "epochs_run": fitted.epochs_run,
        "best_epoch": fitted.best_epoch,
        "stopped_early": fitted.stopped_early,
    }
    outcome = ModelOutcome(name, settings.describe(), labels, metrics, training, fitted.history)
    return Exported(onnx_model, export.framework_versions(onnx_model, libraries), outcome)


def train(args: argparse.Namespace) -> tuple[list[tuple[str, ...]], Path]:
    """The whole run: data, fit + export + evaluate each model, repository, report; returns
    the table's rows and the report, printed once nothing is undone (main)."""
    from training import data, report
    from training.repository import MODEL_FILE, next_version, publishing, stage_version

    dataset = data.load(args.data_dir)
    # fail now, not after minutes of fitting, nor after the versions are published
    for name in args.models:
        make_directory(args.out / name)  # 0755: a server of another user lists it
        say_removed(remove_abandoned(args.out / name))
        try:
            tempfile.TemporaryDirectory(prefix=STAGING, dir=args.out / name).cleanup()
        except OSError as error:  # named by the model's directory, not the hidden name tried
            raise OSError(error.errno, error.strerror, str(args.out / name)) from None
        next_version(args.out / name)  # a corrupt .highest-version, no number left
    make_directory(args.report_dir, mode=None)  # synced into its parent, as the others
    subset = slice(args.train_subset)
    flags = (f"--train-subset {args.train_subset} with " if args.train_subset else "") + (
        f"--validation-split {args.validation_split:g}")
    data.check_training_part(len(dataset.y_train[subset]), args.validation_split, flags)
    x_train, x_val, y_train, y_val = data.split_train_validation(
        dataset.x_train[subset], dataset.y_train[subset], args.validation_split, args.split_seed
    )
    data.check_every_class(y_train, f"--train-subset {args.train_subset}: its training part"
                           if args.train_subset else "the training set")
    data.check_validation_part(len(y_val), flags)
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

    staged = []
    try:  # every version and the report are written before any version is published
        for name, model in exported.items():
            staged.append(stage_version(args.out, name, model.onnx_model,
                                        manifest_of(model, dataset)))
    except BaseException:
        for version in staged:
            version.discard()
        raise
    outcomes = [model.outcome for model in exported.values()]
    with publishing(staged) as targets:
        for outcome, target in zip(outcomes, targets, strict=True):
            outcome.onnx_path = target / MODEL_FILE
        print(f"\nwriting the report into {args.report_dir}", flush=True)
        try:
            report_file = report.write_report(args.report_dir, outcomes, dataset.x_test,
                                              dataset.y_test, dataset.checksums())
        except OSError as error:  # matplotlib's say no file
            raise OSError(error.errno, f"{error.strerror}: writing the report into "
                          f"{args.report_dir}") from None
    for stop in (signal.SIGTERM, signal.SIGINT):  # published, the run is whole: a stop from
        handle(stop, signal.SIG_DFL)  # here on ends the process, undoing nothing
    return [(outcome.name, f"{outcome.metrics['test_accuracy']:.4f}", str(outcome.onnx_path),
             f"{outcome.onnx_path.stat().st_size / 1024:.0f} KiB") for outcome in outcomes], \
        report_file


def manifest_of(model: Exported, dataset: Dataset) -> dict:
    """What model.json says of a model that only the run knows."""
    outcome = model.outcome
    return {
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


def main(argv: list[str] | None = None) -> int:
    try:  # a process calling main() (a notebook, a job) keeps its own handlers and streams
        with handlers_given_back(), output_that_may_close():  # `fmnist-train | head`: runs on
            return _main(argv)
    except StdoutError as error:  # after publishing (before it, _main undoes the run)
        print(f"fmnist-train: error: {error} (after the run published its models and their "
              "report)", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # whose flags name a value as given (common.flags.given), not sys.argv's
    warn_of_misspelt_variables("fmnist-train")
    for flag, value, path in (("--report-dir", args.report_dir, args.report_dir), *(
            ("--out", args.out, args.out / name) for name in (*args.models, "reports")),
            ("--data-dir", args.data_dir, args.data_dir and args.data_dir.expanduser())):
        existing = next((p for p in (path, *path.parents) if p.exists()), None) if path else None
        if existing and not existing.is_dir():  # named as given: flag or FMNIST_* variable
            parser.error(f"{given(flag, value, argv)}: {existing} is a file, not a directory")
    if args.report_dir and args.report_dir.is_dir() and any(args.report_dir.iterdir()):
        parser.error(f"{given('--report-dir', args.report_dir, argv)}: not empty (its old "
                     "pictures would sit beside the new report); give a new or empty directory")
    start = time.perf_counter()
    handle(signal.SIGTERM, terminate)
    made = [path for path in (args.report_dir, args.out / "reports",  # and on the way to them
                              *(args.out / name for name in args.models), args.out,
                              *args.out.parents, *(args.report_dir or Path()).parents)
            if path and not path.exists()]
    try:
        if not args.report_dir:
            args.report_dir = new_report_dir(args.out)
            made.insert(0, args.report_dir)
        if set(args.models) - {"baseline"}:
            import_tensorflow_quietly()
        rows, report_file = train(args)
    except KeyboardInterrupt as stop:
        _remove_made(made, args.report_dir)
        end_open_line()
        terminated = isinstance(stop, Terminated)
        print(f"fmnist-train: {'stopped (SIGTERM)' if terminated else 'interrupted'}",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except Exception as error:
        _remove_made(made, args.report_dir)
        end_open_line()
        if args.debug:
            raise
        explained = isinstance(error, DatasetError | TrainingError | RepositoryError |
                               StdoutError)
        message = str(error) if explained else f"{type(error).__name__}: {error}"
        if not explained and isinstance(error, OSError) and error.strerror:  # not "[Errno 13]"
            message = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
        print(f"fmnist-train: error: {message}", file=sys.stderr)
        return 1
    print()  # published: a failure to say so (stdout) undoes nothing (it took the report away)
    print_table(("model", "test accuracy", "ONNX file", "size"), rows)
    print(f"\nreport: {report_file}\ntotal time: {time.perf_counter() - start:.0f} s")
    return 0


def _remove_made(directories: list[Path], report_dir: Path | None) -> None:
    """A failed run leaves nothing of its own making behind: its report directory, which may
    hold part of a report (emptied if it was given empty), and the others if they are empty.
    A second stop does not cut this short."""
    for stop in (signal.SIGTERM, signal.SIGINT):
        handle(stop, signal.SIG_IGN)
    if report_dir in directories:
        shutil.rmtree(report_dir, ignore_errors=True)
    elif report_dir and report_dir.is_dir():  # given, and empty at the start (main checks)
        for path in report_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in sorted(directories, key=lambda path: len(path.absolute().parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: rmdir refuses
            path.rmdir()


if __name__ == "__main__":
    sys.exit(main())
