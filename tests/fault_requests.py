"""The Classify request tests/test_faults.py and tests/test_faults_under_load.py send: the
same 8 random images, as many of them as a test asks for."""

import numpy as np

from fashion_mnist.v1 import classifier_pb2 as pb

IMAGES = np.random.default_rng(5).integers(0, 256, (8, 28, 28), dtype=np.uint8)


def classify_request(count: int = len(IMAGES)) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(images=[IMAGES[i % len(IMAGES)].tobytes() for i in range(count)])
