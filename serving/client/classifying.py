"""``fmnist classify``: image files, ``.npy`` arrays and test-set images through the service,
in calls the server takes; prints each image's top classes and the baseline's answer."""

import numpy as np

from common.dataset import load_test_set
from common.flags import given
from serving.client.api import ClassifierClient
from serving.client.cli import CLASSIFY_BATCH, UsageError
from serving.client.inputs import load_images


def percent(probability: float) -> str:
    """To 0.1%, but a near-certain answer is not rounded to "100.0%" beside "0.0%", a certainty
    and an impossibility the model did not say (as the page shows them)."""
    if probability >= 0.9995:
        return ">99.9%"
    return "<0.1%" if probability < 0.0005 else f"{probability:.1%}"


def classify(args, security) -> int:
    """Runs ``fmnist classify`` (its arguments ``args``) over ``security``; the exit status."""
    if not args.files and not args.test_index:
        raise UsageError("nothing to classify: give image/.npy files or --test-index")
    batches, names, truths, pictures = [], [], [], 0
    if args.files:
        images, file_names, pictures = load_images(args.files, args.invert)
        batches.append(images)
        names += file_names
        truths += [None] * len(file_names)
    if args.invert and not pictures:  # it was ignored without a word (for "-" too, an array)
        raise UsageError(f"{given('--invert', None, args.argv)}: no picture file to invert "
                         "(.npy arrays and --test-index images are taken as they are)")
    if args.test_index:
        test_images, test_labels = load_test_set(args.data_dir)
        wrong = [i for i in args.test_index if not 0 <= i < len(test_images)]
        if wrong:
            raise UsageError(f"--test-index {wrong[0]}: expected 0..{len(test_images) - 1}")
        batches.append(test_images[args.test_index])
        names += [f"test[{i}]" for i in args.test_index]
        truths += [int(test_labels[i]) for i in args.test_index]
    images = np.concatenate(batches)
    with ClassifierClient(args.target, args.timeout, security, args.lb) as client:
        # in calls the server takes (its --max-request-images may be less), all to one version
        answer = client.classify(images, args.model, args.version, batch_size=CLASSIFY_BATCH)
        model, baseline = answer.model, answer.baseline
        class_names = list(client.get_model(model.name, model.version).class_names)
    width = max(len(f"{model.name} v{model.version}"), len(f"{baseline.name} v{baseline.version}"))
    for i, name in enumerate(names):
        truth = f"  (true: {class_names[truths[i]]})" if truths[i] is not None else ""
        print(f"{name}{truth}")
        top = np.argsort(-model.probabilities[i], kind="stable")[: args.top]
        print(f"  {f'{model.name} v{model.version}':<{width}}  "
              + "   ".join(f"{class_names[k]} {percent(model.probabilities[i, k]):>6}"
                           for k in top))
        label = baseline.labels[i]
        if (baseline.name, baseline.version) != (model.name, model.version):  # not twice
            print(f"  {f'{baseline.name} v{baseline.version}':<{width}}  "
                  f"{class_names[label]} {percent(baseline.probabilities[i, label]):>6}")
    return 0
