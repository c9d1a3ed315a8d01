"""``fmnist score``: the test set (or a slice of it) through the service, in batches, with a
progress bar; prints accuracies, agreement with the baseline, throughput and latency, and
optionally the confusion matrix, every answer into a CSV file and every figure into JSON."""

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.dataset import load_test_set
from common.flags import given
from serving.client import summary
from serving.client.api import ClassifierClient
from serving.client.cli import SCORE_BATCH, TOLERANCE, UsageError
from serving.client.output_files import (
    check_writable,
    same_file,
    std_stream,
    write_file,
    write_json,
)
from serving.client.predictions import Predictions
from serving.client.stops import Terminated


def score(args, security) -> int:
    """Runs ``fmnist score`` (its arguments ``args``) over ``security``; the exit status."""
    if args.tolerance is not None and args.expect_accuracy is None:  # was silently ignored
        raise UsageError(f"{given('--tolerance', f'{args.tolerance:g}', args.argv)} without "
                         "--expect-accuracy: it is the allowed difference from the expected "
                         "accuracy")
    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    for flag, path in (("--csv", args.csv), ("--json", args.json)):
        if path:
            check_writable(given(flag, path, args.argv), path)
    if args.csv and args.json and same_file(args.csv, args.json):
        raise UsageError(f"{given('--csv', args.csv, args.argv)} and "
                         f"{given('--json', args.json, args.argv)}: the same file; give each "
                         "its own")
    answers, latencies, sent_at = [], [], []
    predictions = None  # made at the first answer: none is written before it

    def timed(batches):
        for batch in batches:
            sent_at.append(time.perf_counter())
            yield batch

    try:  # from the start: a stop during the test set's load or the first call said no more
        # than "stopped (SIGTERM)", and left a previous run's files as if this run's
        images, labels, end = _test_images(args)
        with ClassifierClient(args.target, args.timeout, security, args.lb) as client, tqdm(
            total=len(images), unit="img", file=sys.stderr,
            # a log would get every redraw; 2>&- leaves Python no sys.stderr
            disable=args.no_progress or not (sys.stderr and sys.stderr.isatty()),
        ) as progress:
            # one image finds the version; every batch asks for that one, whatever is published
            # meanwhile (the answers of two versions would be refused at the end, by joined)
            found = client.classify(images[:1], args.model, args.version).model
            expected = _expected_accuracy(args, client, found)
            batch_size = _batch_size(args, client.max_request_images(found.name, found.version))
            batches = [images[start : start + batch_size]
                       for start in range(0, len(images), batch_size)]
            started = time.perf_counter()
            if args.rpc == "stream":
                stream = client.classify_batches(timed(batches), found.name, found.version)
            else:
                stream = (client.classify(batch, found.name, found.version)
                          for batch in timed(batches))
            into_csv = functools.partial(write_file, "--csv", args.csv,
                                         f"the CSV's end (of {len(labels)} rows)")
            figures = functools.partial(summary.document, args, answers, labels=labels,
                                        latencies=latencies, batch_size=batch_size,
                                        expected=expected, tolerance=tolerance)
            for index, answer in enumerate(stream):
                latencies.append(time.perf_counter() - sent_at[index])
                answers.append(answer)
                progress.update(len(answer))
                if args.csv:  # (the file opened, emptied, once an answer is there to write)
                    predictions = predictions or Predictions(answers, args.offset, labels,
                                                             into_csv)
                    predictions.arrived()
            if predictions:  # every row, however slow their reader; a stop meanwhile says so
                predictions.close()
            elapsed = time.perf_counter() - started
    except UsageError:  # refused before the run: its files are left alone
        raise
    except (KeyboardInterrupt, Exception) as ended:  # a stop (Ctrl-C, SIGTERM) or an error
        # (the server went away): cli's one line says how far, and the files
        answered = sum(map(len, answers))
        if not answered and isinstance(ended, Exception):  # `UNAVAILABLE: ...` alone: refused
            raise  # as by a usage error (no server, no such model), a previous run's files kept
        ended_by = ("error" if isinstance(ended, Exception) else
                    "SIGTERM" if isinstance(ended, Terminated) else "SIGINT")
        files = _files_left(predictions, args, ended, answered and functools.partial(
            figures, seconds=time.perf_counter() - started, ended_by=ended_by))
        if files or not (predictions and ended is predictions.error):  # `--csv -: its reader`
            ended.progress = (f" after {answered} of {len(labels)} images" if answered
                              else " before the first answer") + files
        raise
    finally:
        if predictions:  # (an error's: the rows of the answers before it)
            predictions.close()
    if predictions and predictions.error:
        raise predictions.error

    document = figures(seconds=elapsed)

    model, baseline, judged = document["model"], document["baseline"], document["expected_accuracy"]
    met = judged is None or judged["met"]
    rows = [
        ("images", f"{len(images)} (test set {args.offset}..{end - 1})"),
        (f"{model['name']} v{model['version']} accuracy", f"{model['accuracy']:.4f}"),
        *([("expected accuracy", f"{expected:.4f} ± {tolerance:g}: "
            f"{'met' if met else 'NOT met'}")] if judged else []),
        *([(f"{baseline['name']} v{baseline['version']} accuracy",
            f"{baseline['accuracy']:.4f}"), ("agreement", f"{document['agreement']:.4f}")]
          if baseline else []),
        ("throughput", f"{document['images_per_second']:.0f} images/s "
         f"({summary.duration(document['seconds'])})"),
        ("latency per batch", f"p50 {document['latency_ms']['p50']:.1f} ms, p99 "
         f"{document['latency_ms']['p99']:.1f} ms ({len(batches)} batch"
         f"{'es' * (len(batches) != 1)} of <= {batch_size}, {args.rpc})"),
    ]
    if args.csv:
        rows.append(("predictions", str(args.csv)))
    out = sys.stdout
    if args.json:
        if write_json(args.json, document) is sys.stdout:
            out = sys.stderr  # stdout holds the JSON alone, for the program that reads it
        else:
            rows.append(("json summary", str(args.json)))
    lines = [f"{name:<22} {value}" for name, value in rows]
    if args.confusion_matrix:
        lines += ["", *summary.table(f"{model['name']} v{model['version']} confusion matrix: a "
                                     "row per true class, a column per class answered",
                                     np.array(model["confusion_matrix"]))]
    try:
        if out:  # closed when the command started (>&-, 2>&-): print would take sys.stdout
            print(*lines, sep="\n", file=out, flush=True)
    except BrokenPipeError:  # its reader quit (| grep -q): cli's exit 0, unless this fails
        if met:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # (what is left, flushed at exit)
    if not met:
        print(f"fmnist score: error: served accuracy {model['accuracy']:.4f} differs from the "
              f"expected {expected:.4f} by more than {tolerance}", file=sys.stderr)
        return 1
    return 0


def _test_images(args) -> tuple[np.ndarray, np.ndarray, int]:
    """The images and labels of the test set's slice to score (--offset, --limit), its end."""
    images, labels = load_test_set(args.data_dir)
    end = len(images) if args.limit is None else args.offset + args.limit
    if not args.offset < end <= len(images):
        asked = given("--offset", args.offset, args.argv) + (
            f" {given('--limit', args.limit, args.argv)}" if args.limit else "")
        raise UsageError(f"{asked}: outside the {len(images)} test images")
    if args.expect_accuracy == "manifest" and end - args.offset < len(images):
        raise UsageError(f"{given('--expect-accuracy', 'manifest', args.argv)}: model.json "
                         f"records the accuracy over all {len(images)} test images; drop "
                         "--offset and --limit, or give a fraction")
    return images[args.offset : end], labels[args.offset : end], end


def _files_left(predictions: Predictions | None, args, ended: BaseException,
                figures: Callable[[], dict] | None) -> str:
    """What a run cut short (``ended``) left of its files: the CSV's rows written so far (after
    an error, every row, as for a run that ends well; a stop gives the thread a second to
    write the rest: a reader that stopped reading holds it), and the JSON of the images
    answered (``figures``, None if none was), marked partial: unwritten, a previous run's file
    stayed, and was read as this run's."""
    said, unwritten = [], {}
    if predictions:  # a stop meanwhile (a second one, or the first after an error): no more
        # waiting, and the same line (it said only "stopped (SIGTERM)", how far lost)
        with contextlib.suppress(KeyboardInterrupt):
            predictions.close(within=None if isinstance(ended, Exception) else 1.0)
        rows = predictions.rows
        if predictions.error is not ended:  # (the error the line says already)
            said.append(str(predictions.error) if predictions.error
                        else f"--csv: {rows} row{'s' * (rows != 1)} written")
    elif args.csv:  # made at the first answer
        unwritten["--csv"] = args.csv
    if args.json and not figures:
        unwritten["--json"] = args.json
    elif args.json:
        try:
            document = figures()
            write_json(args.json, document)
            said.append(f"--json: partial, {document['images']} images")
        except KeyboardInterrupt:  # a second stop
            said.append("--json not written")
        except Exception as error:  # _write's (the file could not be written), or the figures'
            said.append(f"--json not written: {error}")
    said += _none_written(unwritten)
    return f" ({', '.join(said)})" if said else ""


def _none_written(paths: dict[str, Path]) -> list[str]:
    """What a run says of the files (``paths``, by flag) it wrote nothing into, no image being
    answered: a previous run's regular file at such a path is removed, not left to be read as
    this run's (a stream, a named pipe, /dev/null are left as they are)."""
    said = [f"{' and '.join(paths)} not written: no image answered"] if paths else []
    removed = []
    for path in paths.values():
        target = Path(os.path.realpath(path))  # a link's file, as it is written
        if not std_stream(path) and target.is_file():
            try:
                target.unlink()  # a link stays, named with its file: it is not what went
                removed.append(f"{path} -> {target}" if Path(path).is_symlink() else str(path))
            except OSError as error:
                said.append(f"the previous {path} left: {error.strerror}")
    return said + ([f"the previous {' and '.join(removed)} removed"] if removed else [])


def _batch_size(args, server_limit: int) -> int:
    """--batch-size, or by default SCORE_BATCH, within what the server takes in a call: a
    server started with a lower --max-request-images refused the default's first call."""
    if args.batch_size is None:
        return min(SCORE_BATCH, server_limit)
    if args.batch_size > server_limit:
        raise UsageError(f"--batch-size {args.batch_size}: the server takes at most "
                         f"{server_limit} images a call (its --max-request-images)")
    return args.batch_size


def _expected_accuracy(args, client, model) -> float | None:
    if args.expect_accuracy is None:
        return None
    if args.expect_accuracy != "manifest":
        return args.expect_accuracy
    recorded = client.get_model(model.name, model.version).test_accuracy
    if not recorded:  # what `fmnist models` shows as "-"
        raise UsageError(f"{given('--expect-accuracy', 'manifest', args.argv)}: the model.json "
                         f"of {model.name} v{model.version} records no test accuracy; give a "
                         "fraction instead")
    return recorded
