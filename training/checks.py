"""What a fitted model must pass before any version of the run is published: finite
probabilities, an exported graph that answers as the fitted model does, and a validation
accuracy better than one answer and at least --min-validation-accuracy."""

from collections.abc import Sequence

import numpy as np

from common.flags import given

# The exported graph against the fitted model on the test images: README's promise (>= 99.9%
# identical labels) and a probability bound far above float32 rounding (2e-4 measured for a
# baseline with alpha 1e-7, ~1e-6 for the Keras models) and far below a wrong graph's.
EXPORT_MIN_SAME_LABELS = 0.999
EXPORT_MAX_PROBABILITY_DIFFERENCE = 0.01


class TrainingError(Exception):
    """A fitted model not worth publishing; the message says which, why and what to change."""


def check_worth_publishing(name: str, reference: np.ndarray, probabilities: np.ndarray,
                           validation_accuracy: float, y_val: np.ndarray, *,
                           minimum: float = 0.0, labels: np.ndarray | None = None,
                           argv: Sequence[str] | None = None) -> None:
    """A fit that diverged gave NaN probabilities (argmax: always class 0), which were
    published and served as the new default version; TrainingError before anything is, as
    for a graph (``probabilities``, ``labels``: the exported one's) that does not answer as the
    fitted model (``reference``) does, whose validation accuracy would not be the served
    model's, and for a model no better than one answer or below ``minimum``
    (--min-validation-accuracy, named as the command line ``argv`` or its variable gave it).
    The test set decides nothing: accuracy is judged on the validation images."""
    if not (np.isfinite(reference).all() and np.isfinite(probabilities).all()):
        raise TrainingError(f"{name}: its probabilities are not finite numbers (the fit "
                            "diverged: lower the learning rate); nothing was published")
    labels = probabilities.argmax(axis=1) if labels is None else labels
    same = float(np.mean(labels == reference.argmax(axis=1)))
    difference = float(np.max(np.abs(probabilities - reference)))
    if same < EXPORT_MIN_SAME_LABELS or difference > EXPORT_MAX_PROBABILITY_DIFFERENCE:
        raise TrainingError(f"{name}: the exported ONNX graph does not answer as the fitted "
                            f"model: the same label for {same:.2%} of the test images (at least "
                            f"{EXPORT_MIN_SAME_LABELS:.1%} expected), probabilities up to "
                            f"{difference:.1e} apart (at most {EXPORT_MAX_PROBABILITY_DIFFERENCE:g}"
                            " expected): the export is wrong; nothing was published")
    chance = np.bincount(y_val).max() / len(y_val)  # always answering the commonest class
    # Keras' accuracy is a float32's: 43/400 is 0.10750000178813934, "above" 0.1075; 1e-6 is
    # far above that rounding and far below one image of a validation set (1/12,000 at most)
    if validation_accuracy - chance <= 1e-6:
        raise TrainingError(f"{name}: validation accuracy {validation_accuracy:.4f} is no "
                            f"better than always answering one class ({chance:.4f}); nothing "
                            "was published")
    if round(validation_accuracy, 4) < minimum:  # as it is printed
        raise TrainingError(f"{name}: validation accuracy {validation_accuracy:.4f} is below "
                            f"{given('--min-validation-accuracy', minimum, argv)}; nothing was "
                            "published")  # or FMNIST_MIN_VALIDATION_ACCURACY=0.9, as given
