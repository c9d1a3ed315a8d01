"""``fmnist --target``: what gRPC would take otherwise than it was meant."""

import pytest

from serving.client import cli


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "dns:///localhost:65536", "myhost:-5",
                                     "[::1]:0"])
def test_a_port_out_of_range_is_refused(capsys, address):
    """gRPC took the port modulo 65536: `--target 127.0.0.1:111697` (a typo of 11697) reached
    whatever listened on 46161, and 99999 said "Connection refused" naming port 34463."""
    with pytest.raises(SystemExit) as refused:
        cli.main(["health", "--target", address])
    assert refused.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fmnist health: error: argument --target: expected a port 1..65535, got {address!r}")
