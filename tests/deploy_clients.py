"""The client side of tests/test_deploy_serves.py and tests/test_deploy_health_port.py: the
token the tls overlay's Secret holds, a client's credentials (with the ``pki`` fixture's
certificates), and a classification with the real client that every served container must
answer correctly."""

import numpy as np

from serving.client.api import ClassifierClient
from serving.client.security import ChannelSecurity
from tests.pki import Pki

TOKEN = "deploy-test-token"
IMAGES = np.random.default_rng(14).integers(0, 256, (8, 28, 28), dtype=np.uint8)


def client_security(pki: Pki) -> ChannelSecurity:
    return ChannelSecurity(tls=True, tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                           tls_key=str(pki.client_key), token=TOKEN)


def check_classifies(target: str, security: ChannelSecurity | None = None) -> None:
    with ClassifierClient(target, timeout=30, security=security) as client:
        answer = client.classify(IMAGES)
    assert len(answer) == len(IMAGES)
    assert answer.model.name == "mlp" and answer.baseline.name == "baseline"
    np.testing.assert_allclose(answer.model.probabilities.sum(axis=1), 1, rtol=1e-4)
    assert (answer.model.labels == answer.model.probabilities.argmax(axis=1)).all()
