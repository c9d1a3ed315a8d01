"""Test-set evaluation and the human-readable report: numbers (metrics.json, report.md) and
pictures (confusion matrices, labelled test images, learning curves)."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import CLASS_NAMES
from training.console import fit_epochs
from training.data import TRAIN_IMAGES
from training.repository import synced, synced_directory

REPORT_FILE = "report.md"
METRICS_FILE = "metrics.json"
SAMPLE_ROWS, SAMPLE_COLUMNS = 4, 8


@dataclass
class ModelOutcome:
    """One trained and exported model as the report sees it."""

    name: str
    description: str
    labels: np.ndarray  # test-set predictions of the exported ONNX graph (what is served)
    metrics: dict[str, Any]
    training: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    onnx_path: Path | None = None


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(CLASS_NAMES)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        name: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(support[i]),
        }
        for i, name in enumerate(CLASS_NAMES)
    }
    return {
        "test_accuracy": round(float(np.mean(y_true == y_pred)), 4),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def agreement(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Fraction of test images on which two models predict the same class."""
    return round(float(np.mean(labels_a == labels_b)), 4)


def plot_confusion_matrices(outcomes: list[ModelOutcome], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(outcomes), figsize=(6.5 * len(outcomes), 6.2), squeeze=False)
    for axis, outcome in zip(axes[0], outcomes, strict=True):
        matrix = np.array(outcome.metrics["confusion_matrix"])
        axis.imshow(matrix, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            dark = count > matrix.max() / 2
            axis.text(
                column,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
        axis.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
        axis.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        accuracy = outcome.metrics["test_accuracy"]
        axis.set_title(f"{outcome.name} (test accuracy {accuracy:.4f})")
    figure.tight_layout()
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


def plot_samples(outcome: ModelOutcome, images: np.ndarray, y_true: np.ndarray, path: Path) -> None:
    """The first test images with predicted (and, when wrong, true) labels; mistakes in red."""
    import matplotlib.pyplot as plt

    count = min(SAMPLE_ROWS * SAMPLE_COLUMNS, len(images))
    figure, axes = plt.subplots(
        SAMPLE_ROWS, SAMPLE_COLUMNS, figsize=(1.9 * SAMPLE_COLUMNS, 2.45 * SAMPLE_ROWS)
    )
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= count:
            axis.axis("off")
            continue
        predicted, true = outcome.labels[index], y_true[index]
        wrong = predicted != true
        axis.imshow(images[index], cmap="gray", vmin=0, vmax=255)  # as the model sees them
        title = CLASS_NAMES[predicted]
        if wrong:
            title += f"\n(true: {CLASS_NAMES[true]})"
        axis.set_title(title, fontsize=9, color="red" if wrong else "black")
        for spine in axis.spines.values():
            spine.set_color("red" if wrong else "lightgray")
            spine.set_linewidth(3 if wrong else 1)
    mistakes = int(np.sum(outcome.labels[:count] != y_true[:count]))
    figure.suptitle(
        f"{outcome.name}: first {count} test images, predicted label "
        f"({mistakes} mistakes in red, true label below)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)


def plot_learning_curves(outcomes: list[ModelOutcome], path: Path) -> None:
    """Loss and accuracy per epoch, train vs validation, one column per Keras model."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(2, len(outcomes), figsize=(6 * len(outcomes), 7), squeeze=False)
    for column, outcome in enumerate(outcomes):
        epochs = range(1, len(outcome.history["loss"]) + 1)
        for row, metric in enumerate(("loss", "accuracy")):
            axis = axes[row][column]
            axis.plot(epochs, outcome.history[metric], "o-", label="train")
            axis.plot(epochs, outcome.history["val_" + metric], "o-", label="validation")
            best = outcome.training.get("best_epoch")
            if best:
                axis.axvline(best, color="gray", linestyle="--", label=f"best epoch ({best})")
            axis.set_title(f"{outcome.name}: {metric}")
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)


def from_report(path: Path | None, report_dir: Path) -> str:
    """``path`` as the report's files name it: relative to the report's directory, so that the
    names still lead to the files when the repository, reports included, is moved or copied
    (into an image: an absolute path would name the machine that trained)."""
    return "" if path is None else os.path.relpath(path.resolve(), report_dir.resolve())


def markdown_report(outcomes: list[ModelOutcome], pictures: list[str], dataset: dict,
                    report_dir: Path) -> str:
    run = outcomes[0].training
    lines = [
        "# Fashion-MNIST training report",
        "",
        *_subset(run),
        "Metrics are those of the exported ONNX graphs (what is served) on the 10,000 test "
        f"images. Training: {run['train_size']} images, validation: {run['validation_size']}, "
        f"seed {run['seed']}.",
        "",
        "## Models",
        "",
        "| model | description | test accuracy | validation accuracy | epochs | fit s | ONNX |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        validation = o.metrics.get("validation_accuracy")
        lines.append(
            f"| {o.name} | {o.description} | {o.metrics['test_accuracy']:.4f} | "
            f"{'' if validation is None else f'{validation:.4f}'} | "
            f"{_epochs(o.training)} | {o.training.get('fit_seconds', '')} | "
            f"{_link(from_report(o.onnx_path, report_dir))} |"
        )
    fits = [(o.name, o.training) for o in outcomes if "patience" in o.training]  # Keras'
    lines += [""] if fits else []
    for name, fit in fits:
        run = fit_epochs(fit["epochs_run"], fit["epochs"], fit["patience"], fit["best_epoch"],
                         fit["stopped_early"])
        lines.append(f"- {name}: {run}")
    agreements = [o for o in outcomes if "agreement_with_baseline" in o.metrics]
    if agreements:
        lines += ["", "## Agreement with the baseline (share of test images, same label)", ""]
        lines += [f"- {o.name}: {o.metrics['agreement_with_baseline']:.4f}" for o in agreements]
    lines += [
        "",
        "## Per-class accuracy (recall: the share of a class's images labelled right) and F1",
        "",
        "| class | " + " | ".join(f"{o.name} accuracy | {o.name} F1" for o in outcomes) + " |",
        "| --- |" + " --- | --- |" * len(outcomes),
    ]
    for name in CLASS_NAMES:
        scores = (o.metrics["per_class"][name] for o in outcomes)
        lines.append(f"| {name} | " + " | ".join(
            f"{score['recall']:.3f} | {score['f1']:.3f}" for score in scores) + " |")
    lines += [
        "",
        f"Precision, recall and the confusion matrices as numbers are in `{METRICS_FILE}`.",
        "",
        "## Pictures",
        "",
    ]
    lines += [f"![{picture}]({picture})" for picture in pictures]
    lines += ["", "## ONNX export (the graph that is served vs the fitted model, test set)", ""]
    lines += [
        f"- {o.name}: max |probability difference| {o.metrics['onnx_max_abs_diff']:.1e}, "
        f"same label on {o.metrics['onnx_label_agreement']:.2%} of the images"
        for o in outcomes
    ]
    lines += [
        "",
        f"## Data ({dataset['source']})",
        "",
        "SHA-256 of each file's IDX content (decompressed, for a .gz):",
        "",
    ]
    lines += [f"- {name}: `{digest}`" for name, digest in dataset["content_sha256"].items()]
    return "\n".join(lines) + "\n"


def _subset(run: dict) -> list[str]:
    """A line saying the run learnt from part of the training images (--train-subset), which
    the sizes alone did not say: a subset's report read as the full run's."""
    subset = run.get("train_subset")
    if not subset or subset >= TRAIN_IMAGES.count:
        return []
    return [f"**A subset:** trained with `--train-subset {subset}`, the first {subset} of the "
            f"{TRAIN_IMAGES.count} training images ({run['train_size']} training, "
            f"{run['validation_size']} validation), not the full run.", ""]


def _epochs(training: dict) -> str:
    """Epochs run, and the one whose weights early stopping kept (those published), if not
    the last."""
    run, best = training.get("epochs_run", ""), training.get("best_epoch")
    return f"{run} (weights of epoch {best})" if best and best != run else str(run)


def _link(path: str) -> str:
    return f"[{path}](<{path}>)" if path else ""  # <>: a path may hold spaces


def write_report(
    report_dir: Path,
    outcomes: list[ModelOutcome],
    x_test: np.ndarray,
    y_test: np.ndarray,
    dataset: dict,
) -> Path:
    """Writes report.md, metrics.json and the PNGs into ``report_dir``; returns report.md."""
    import matplotlib

    matplotlib.use("Agg")
    report_dir.mkdir(parents=True, exist_ok=True)
    pictures = ["confusion-matrices.png"]
    plot_confusion_matrices(outcomes, report_dir / pictures[0])
    keras_outcomes = [o for o in outcomes if o.history]
    if keras_outcomes:
        pictures.append("learning-curves.png")
        plot_learning_curves(keras_outcomes, report_dir / pictures[-1])
    for outcome in outcomes:
        pictures.append(f"samples-{outcome.name}.png")
        plot_samples(outcome, x_test, y_test, report_dir / pictures[-1])
    metrics = {
        o.name: {
            "description": o.description,
            "onnx": from_report(o.onnx_path, report_dir),
            "metrics": o.metrics,
            "training": o.training,
        }
        for o in outcomes
    }
    (report_dir / METRICS_FILE).write_text(
        json.dumps({"models": metrics, "dataset": dataset}, indent=2) + "\n"
    )
    report = report_dir / REPORT_FILE
    report.write_text(markdown_report(outcomes, pictures, dataset, report_dir))
    synced_directory(report_dir)  # as a version is: never published beside a truncated report
    synced(report_dir.parent)  # its name
    return report
