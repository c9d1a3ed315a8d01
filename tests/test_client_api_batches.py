"""``ClassifierClient.classify`` of more images than one call may carry: a batch job hands it
the whole array, as `fmnist classify` a .npy of any length."""

import numpy as np
import pytest

from serving.client.api import ClassifierClient
from tests.conftest import local_settings, reference, running_server


def test_classify_takes_more_images_than_one_call_may_carry(target, test_set,
                                                            model_repository):
    """`client.classify(images)` of the 10,000 test images was refused, INVALID_ARGUMENT
    "expected at most 1024 images per request", leaving the job to split them as `fmnist`
    does; now it sends calls the server takes and joins their answers, in order."""
    images = test_set[0][:2500]
    with ClassifierClient(target) as client:
        answer = client.classify(images, model="mlp")
    probabilities, labels = reference(model_repository, "mlp", 2, images)
    assert len(answer) == 2500 and (answer.model.name, answer.model.version) == ("mlp", 2)
    np.testing.assert_array_equal(answer.model.labels, labels)
    np.testing.assert_allclose(answer.model.probabilities, probabilities, atol=1e-6)
    assert len(answer.baseline.class_names) == 2500
    # a notebook cell ending in it showed 60 KB, every class name of both models (numpy
    # summarizes its arrays; a list of names it cannot)
    assert len(repr(answer)) < 5000 and "name='mlp', version=2" in repr(answer)


def test_classify_keeps_under_a_lower_server_limit_and_its_batch_size(model_repository,
                                                                      test_set):
    """A server's --max-request-images read as `fmnist classify` reads it; ``batch_size`` caps
    the images per call further; either way every image is answered, once."""
    images = test_set[0][:25]
    settings = local_settings(model_repository=model_repository, max_request_images=10)
    with running_server(settings) as server, ClassifierClient(f"127.0.0.1:{server.port}") as client:
        whole = [client.classify(images, model="softmax", batch_size=size) for size in (None, 3)]
        one_by_one = [client.classify(image, model="softmax").model.labels[0] for image in images]
    for answer in whole:
        np.testing.assert_array_equal(answer.model.labels, one_by_one)
    with pytest.raises(ValueError, match=r"^batch_size: expected a count >= 1, got 0$"):
        ClassifierClient("127.0.0.1:1").classify(images, batch_size=0)


def test_classify_batches_splits_a_batch_as_classify_does(model_repository, test_set):
    """`client.classify_batches(batches)` of a batch over the server's --max-request-images was
    refused, INVALID_ARGUMENT, where `client.classify` of the same images splits them: each
    batch goes in calls the server takes (or of ``batch_size``), one answer per batch, in
    order."""
    images = test_set[0][:40]
    settings = local_settings(model_repository=model_repository, max_request_images=10)
    with running_server(settings) as server, ClassifierClient(f"127.0.0.1:{server.port}") as client:
        expected = client.classify(images, model="softmax").model.labels
        for batch_size in (None, 3):
            answers = list(client.classify_batches([images[:25], images[25:28], images[28:]],
                                                   model="softmax", batch_size=batch_size))
            assert [len(answer) for answer in answers] == [25, 3, 12]
            np.testing.assert_array_equal(
                np.concatenate([answer.model.labels for answer in answers]), expected)
            assert len(answers[0].baseline.class_names) == 25
        with pytest.raises(ValueError, match=r"^batch_size: expected a count >= 1, got 0$"):
            list(client.classify_batches([images], batch_size=0))


def test_a_batch_split_into_parts_keeps_to_the_version_its_first_part_got(repository_copy,
                                                                          test_set, monkeypatch):
    """classify_batches sent every part of a batch larger than a call takes before the first
    was answered, each to the newest version: one published between two parts failed the
    batch, ValueError "the model changed version". The parts after the first go to the
    version that answered it, as classify's do."""
    from serving.client import api
    from tests.conftest import publish_mlp_v3

    settings = local_settings(model_repository=repository_copy, poll_interval=0.1,
                              max_request_images=10)
    encoded, encode = [], api.encode_request

    def published_before_the_second_part(*args):
        encoded.append(args)
        if len(encoded) == 2:  # a real mlp v3, loaded by the server, before the 2nd part goes
            publish_mlp_v3(repository_copy, target)
        return encode(*args)

    monkeypatch.setattr(api, "encode_request", published_before_the_second_part)
    images = test_set[0][:25]
    with running_server(settings) as server, ClassifierClient(
            target := f"127.0.0.1:{server.port}") as client:
        (answer,) = client.classify_batches([images], model="mlp")
    assert (len(encoded), len(answer), answer.model.version) == (3, 25, 2)
    np.testing.assert_array_equal(answer.model.labels,
                                  reference(repository_copy, "mlp", 2, images)[1])
