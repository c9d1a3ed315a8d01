"""What ``fmnist score`` tells of a run beyond its accuracies: each class's accuracy and the
confusion matrix, as a table to read (``--confusion-matrix``) and, with every figure of the run,
as JSON for a program (``--json``)."""

import numpy as np

from common.contract import CLASS_NAMES, NUM_CLASSES
from serving.client.answers import Classification, ModelAnswer, joined


def confusion(labels: np.ndarray, answered: np.ndarray) -> np.ndarray:
    """int64 [10,10]: how many images of each true class (row) got each answer (column)."""
    answered = np.asarray(answered, np.int64)
    outside = answered[(answered < 0) | (answered >= NUM_CLASSES)]
    if outside.size:  # bincount would give a matrix of another shape, or fail
        raise ValueError(f"the model answered label {outside[0]}, not one of the "
                         f"{NUM_CLASSES} classes")
    cells = np.asarray(labels, np.int64) * NUM_CLASSES + answered
    return np.bincount(cells, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def class_accuracies(matrix: np.ndarray) -> list[float | None]:
    """Per class, the share of its images answered right; None for a class with none (a
    slice of the test set may hold no image of it)."""
    return [float(matrix[i, i] / images) if images else None
            for i, images in enumerate(matrix.sum(axis=1))]


def table(title: str, matrix: np.ndarray) -> list[str]:
    """The confusion matrix as aligned lines: a row per true class, numbered, a column per
    class answered, by its number, and the class's accuracy (``-``: no image of it)."""
    width = max(3, len(str(matrix.max())))
    names = [f"{label} {name}" for label, name in enumerate(CLASS_NAMES)]
    name_width = max(map(len, names))
    lines = [title, " " * name_width + "".join(f" {label:>{width}}" for label in
                                               range(NUM_CLASSES)) + "  accuracy"]
    for name, row, accuracy in zip(names, matrix, class_accuracies(matrix), strict=True):
        lines.append(f"{name:<{name_width}}" + "".join(f" {count:>{width}}" for count in row)
                     + f"  {'-' if accuracy is None else f'{accuracy:.4f}':>8}")
    return lines


def duration(seconds: float) -> str:
    """A run's duration to read: in ms below a second, to 3 digits (a quick run's was "0.00 s")."""
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.2f} s"


def side(answer: ModelAnswer, labels: np.ndarray) -> dict:
    """One model version's figures over the run, as --json writes them."""
    matrix = confusion(labels, answer.labels)
    return {
        "name": answer.name,
        "version": answer.version,
        "accuracy": float(np.mean(answer.labels == labels)),
        "per_class": {name: {"images": int(images), "accuracy": accuracy}
                      for name, images, accuracy in zip(CLASS_NAMES, matrix.sum(axis=1),
                                                        class_accuracies(matrix), strict=True)},
        "confusion_matrix": matrix.tolist(),  # [true class][answered class]
    }


def document(args, answers: list[Classification], *, labels: np.ndarray, latencies: list[float],
             batch_size: int, expected: float | None, tolerance: float, seconds: float,
             ended_by: str | None = None) -> dict:
    """The run's figures, --json's document (the summary's rows are read from it). A run cut
    short (``ended_by`` its stop's signal) has those of the images answered before it, marked
    ``complete: false``, and its expected accuracy not judged (``met: null``): the figures of
    a part."""
    everything = joined(answers)
    model, baseline = everything.model, everything.baseline
    labels = labels[: len(model.labels)]
    accuracy = float(np.mean(model.labels == labels))
    # to 1e-9, far below one image in 10,000: in floats abs(0.6585 - 0.6584) > 0.0001
    met = None if ended_by or expected is None else round(abs(accuracy - expected), 9) <= tolerance
    own_baseline = (baseline.name, baseline.version) != (model.name, model.version)
    p50, p99 = np.percentile(np.array(latencies[: len(answers)]) * 1000, [50, 99])
    return {
        "target": args.target, "images": len(labels), "offset": args.offset,
        "complete": ended_by is None, "ended_by": ended_by,
        "classes": list(CLASS_NAMES), "model": side(model, labels),
        "baseline": side(baseline, labels) if own_baseline else None,
        "agreement": float(np.mean(model.labels == baseline.labels)) if own_baseline else None,
        "expected_accuracy": None if expected is None else {
            "accuracy": expected, "tolerance": tolerance, "met": met},
        "seconds": seconds, "images_per_second": len(labels) / seconds,
        "latency_ms": {"p50": p50, "p99": p99}, "batches": len(answers),
        "batch_size": batch_size, "rpc": args.rpc,
    }
