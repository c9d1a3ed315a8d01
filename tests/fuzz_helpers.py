"""What tests/test_fuzz.py and tests/test_fuzz_v2.py share: the module's in-process server
and a channel to it (the fixtures ``fuzz_server`` and ``fuzz_channel``; a test module imports
``fuzz_server_fixture`` and ``fuzz_channel_fixture``), hypothesis' settings, the versions the
fixture repository loads, a strategy for model names, and a future's outcome."""

from concurrent.futures import Future

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.conftest import FIXTURE_VERSIONS, local_settings, running_server

MAX_BATCH = 16
CASES_PER_EXAMPLE = 10
OK, INVALID, NOT_FOUND = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
)
# Every loaded version, from the fixture repository (versions are numbered per model from 1).
VERSIONS: dict[str, list[int]] = {}
for _name, _seed in FIXTURE_VERSIONS:
    VERSIONS.setdefault(_name, []).append(len(VERSIONS.get(_name, [])) + 1)
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", name="fuzz_server")
def fuzz_server_fixture(model_repository, grpc_server):
    settings_ = local_settings(
        model_repository=model_repository, parallel_inferences=2,
        max_request_images=MAX_BATCH, grpc_server=grpc_server,
    )
    with running_server(settings_) as running:
        yield running


@pytest.fixture(scope="module", name="fuzz_channel")
def fuzz_channel_fixture(fuzz_server):
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_server.port}") as opened:
        yield opened


model_names = st.one_of(
    st.sampled_from(["", "mlp", "softmax", "baseline", "MLP", "mlp ", "../mlp", "\x00"]),
    st.text(max_size=40),
)


def outcome(future: Future):
    try:
        return OK, future.result()
    except grpc.RpcError as error:
        return error.code(), error.details()

