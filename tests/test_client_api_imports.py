"""Where the Python API's names are: ``serving.client`` gives them, as ``tritonclient.grpc``
gives InferenceServerClient, and imports them only when asked (``fmnist health`` starts fast)."""

import subprocess
import sys
import textwrap


def test_the_api_names_come_from_the_package_only_when_asked():
    """`from serving.client import ClassifierClient` was an ImportError: a notebook had to
    know three modules (api, security, errors) for a client with a token."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import serving.client
        assert "grpc" not in sys.modules and "numpy" not in sys.modules
        from serving.client import ChannelSecurity, Classification, ClassifierClient
        from serving.client import ClassifierError, ModelAnswer
        from serving.client import api, errors, security
        assert (ClassifierClient, Classification, ModelAnswer) == (
            api.ClassifierClient, api.Classification, api.ModelAnswer)
        assert (ClassifierError, ChannelSecurity) == (errors.ClassifierError,
                                                      security.ChannelSecurity)
        assert "ClassifierClient" in dir(serving.client)
        try:
            serving.client.Nope
        except AttributeError as error:
            assert str(error) == "module 'serving.client' has no attribute 'Nope'", error
    """)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
