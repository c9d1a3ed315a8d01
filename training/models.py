"""The three models and how they are fitted: two Keras networks and a scikit-learn baseline.

All of them see ``training.preprocessing.preprocess`` output (float32 [N,784] in [0, 1]), the
same values the exported ONNX graphs compute from raw uint8 images. TensorFlow is imported
quietly (``import_tensorflow_quietly``) by the command line.
"""

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from common.contract import IMAGE_SHAPE, NUM_CLASSES, PIXELS


@dataclass(frozen=True)
class KerasSettings:
    """Hyper-parameters of a Keras model; no hidden layers is the softmax (logistic) model."""

    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    batch_norm: bool = False
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float | None = None  # None: the optimizer's own default
    lr_schedule: str = "none"  # "none" or "cosine" (decays to 0 over ``epochs``)
    patience: int = 0  # 0: run all epochs, no restore of the best weights
    flip_augment: bool = False  # also train on left-right mirrored images (twice the data)

    def describe(self) -> str:
        if not self.hidden:
            return "Keras softmax regression 784-10"
        layers = "-".join(str(n) for n in (PIXELS, *self.hidden, NUM_CLASSES))
        extras = [f"dropout {self.dropout:g}"] + (["batch norm"] if self.batch_norm else [])
        return f"Keras MLP {layers} (ReLU), " + ", ".join(extras)


@dataclass(frozen=True)
class BaselineSettings:
    """Hyper-parameters of ``SGDClassifier(loss="log_loss")``."""

    max_iter: int = 20
    alpha: float = 1e-3
    tol: float | None = 1e-3
    n_jobs: int = 2  # the one-vs-rest binary problems in parallel

    def describe(self) -> str:
        return (
            f"scikit-learn SGDClassifier(loss='log_loss', alpha={self.alpha:g}, "
            f"max_iter={self.max_iter}, tol={'None' if self.tol is None else f'{self.tol:g}'})"
        )


# Measured on this 2-core machine (README, "Training"): softmax regression needs a higher rate
# decayed to 0 to pass 0.845; the MLP passes 0.895 with batch norm and a cosine schedule.
SOFTMAX_DEFAULTS = KerasSettings(
    epochs=25, batch_size=256, learning_rate=5e-3, lr_schedule="cosine"
)
MLP_DEFAULTS = KerasSettings(
    hidden=(512, 256),
    dropout=0.3,
    batch_norm=True,
    epochs=20,
    batch_size=512,
    learning_rate=4e-3,
    lr_schedule="cosine",
    patience=5,
)


@dataclass
class FitResult:
    """A fitted model and what the manifest and report need to know about the fit."""

    model: Any
    fit_seconds: float
    epochs_run: int
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False  # patience ran out (on the last epoch too: not told by the count)


def seed_everything(seed: int) -> None:
    """Python, numpy and TensorFlow seeds plus deterministic TF ops: same seed, same model;
    and Keras' names begun afresh (dense, not dense_2 after another model of the run), so the
    same model is the same file, the same sha256, whichever models share its run."""
    import keras
    import tensorflow as tf

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_keras(settings: KerasSettings, steps_per_epoch: int):
    """``Input(784)`` -> [Dense(ReLU) (+ BatchNorm) + Dropout]* -> ``Dense(10, softmax)``."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((PIXELS,), name="pixels")])
    for width in settings.hidden:
        model.add(layers.Dense(width, use_bias=not settings.batch_norm))
        if settings.batch_norm:
            model.add(layers.BatchNormalization())
        model.add(layers.Activation("relu"))
        if settings.dropout:
            model.add(layers.Dropout(settings.dropout))
    model.add(layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities"))

    learning_rate = learning_rate_of(settings)
    if settings.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=settings.epochs * steps_per_epoch
        )
    optimizer = keras.optimizers.get(
        {"class_name": settings.optimizer, "config": {"learning_rate": learning_rate}}
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def learning_rate_of(settings: KerasSettings) -> float:
    """The rate the optimizer starts with: ``--learning-rate``, else the optimizer's own
    default."""
    if settings.learning_rate is not None:
        return settings.learning_rate
    import keras

    rate = float(keras.optimizers.get(settings.optimizer).learning_rate)  # a float32 variable's
    return float(f"{rate:.7g}")  # 0.001, not 0.0010000000474974513


def fit_keras(
    settings: KerasSettings,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    verbose: int | str = "auto",
) -> FitResult:
    """Fits on preprocessed pixels; with patience > 0, early stopping on validation accuracy
    restores the best epoch's weights."""
    import keras

    if settings.flip_augment:
        mirrored = x_train.reshape(-1, *IMAGE_SHAPE)[:, :, ::-1].reshape(len(x_train), PIXELS)
        x_train, y_train = np.concatenate([x_train, mirrored]), np.concatenate([y_train, y_train])
    steps_per_epoch = int(np.ceil(len(x_train) / settings.batch_size))
    model = build_keras(settings, steps_per_epoch)
    callbacks = []
    if settings.patience:
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_accuracy",
            patience=settings.patience,
            restore_best_weights=True,
        )
        callbacks.append(stopper)
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        callbacks=callbacks,
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    best = stopper.best_epoch + 1 if callbacks else None
    stopped = bool(callbacks and stopper.stopped_epoch)  # Keras' 0: it never stopped the fit
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    return FitResult(model, seconds, len(history.epoch), curves, best, stopped)


def fit_baseline(
    settings: BaselineSettings, x_train: np.ndarray, y_train: np.ndarray, seed: int
) -> FitResult:
    """``SGDClassifier(loss="log_loss")``; int64 labels because skl2onnx rejects uint8 ones."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier

    params = asdict(settings)
    classifier = SGDClassifier(loss="log_loss", random_state=seed, **params)
    start = time.perf_counter()
    with warnings.catch_warnings():  # few iterations are the point of a quick baseline
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x_train, y_train.astype(np.int64))
    return FitResult(classifier, time.perf_counter() - start, int(classifier.n_iter_))


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
